//! Operators sign in to the real `serve`: the first owner from a one-time bootstrap secret,
//! cookie sessions with their CSRF token, bearer sessions, revocation on sign-out, password
//! and role changes, the sign-in throttle and its audit rows, and TOTP with the setting that
//! requires it.

use std::time::{SystemTime, UNIX_EPOCH};

use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::serve::Served;
use codexmesh_test_kit::wait::Probe;
use reqwest::header::{HeaderMap, COOKIE, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type AnyError = Box<dyn std::error::Error>;

const PASSWORD: &str = "correct horse battery staple";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(served: &Served) -> Result<Self, AnyError> {
        Ok(Self {
            base: format!("http://{}", served.admin_addr()?),
            http: reqwest::Client::new(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Result<(StatusCode, HeaderMap, Value), AnyError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.bearer_auth(t),
            Auth::Cookie { session, csrf } => {
                req = req.header(COOKIE, format!("codexmesh_session={session}"));
                if let Some(c) = csrf {
                    req = req.header("x-csrf-token", c);
                }
            }
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await?;
        Ok((
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn sign_in(
        &self,
        name: &str,
        password: &str,
        totp: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Value), AnyError> {
        let mut body = json!({"name": name, "password": password});
        if let Some(code) = totp {
            body["totp"] = json!(code);
        }
        self.send(Method::POST, "/api/v1/session", Auth::None, Some(body))
            .await
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie {
        session: &'a str,
        csrf: Option<&'a str>,
    },
}

fn owner_token(ws: &Workspace) -> Result<String, AnyError> {
    let v = ws.ok_json(&[
        "operator", "token", "create", "--label", "root", "--role", "owner",
    ])?;
    Ok(v["secret"].as_str().ok_or("no secret")?.to_owned())
}

/// Creates an operator through the API (the owner token) with [`PASSWORD`].
async fn operator(
    api: &Api,
    owner: &str,
    name: &str,
    role: &str,
    pools: &[&str],
) -> Result<(), AnyError> {
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/operators",
            Auth::Bearer(owner),
            Some(json!({"name": name, "role": role, "pools": pools, "password": PASSWORD})),
        )
        .await?;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_owner_comes_from_a_bootstrap_secret_once_and_no_log_holds_it() -> TestResult {
    let ws = Workspace::new()?;
    let served = Served::start(&ws, &[])?;
    let api = Api::new(&served)?;
    // serve's output is not a terminal here (as in a container): it says how to get a secret and
    // prints none, since that output is shipped as a log.
    codexmesh_test_kit::wait::until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        "the first-owner note",
        || {
            Ok(
                match served.log_lines("codexmesh operator bootstrap").is_empty() {
                    false => Probe::Ready(()),
                    true => Probe::NotYet("no note yet".into()),
                },
            )
        },
    )?;

    let secret = ws.ok_json(&["operator", "bootstrap"])?["secret"]
        .as_str()
        .ok_or("operator bootstrap printed no secret")?
        .to_owned();
    // Wrong secrets and bad input create nothing.
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/bootstrap",
            Auth::None,
            Some(json!({"secret": "cmb_nope", "name": "root@x.test", "password": PASSWORD})),
        )
        .await?;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/bootstrap",
            Auth::None,
            Some(json!({"secret": secret, "name": "root@x.test", "password": "short"})),
        )
        .await?;
    assert_eq!(
        (code, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("password")),
        "{v}"
    );
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/bootstrap",
            Auth::None,
            Some(json!({"secret": secret, "name": "root@x.test", "password": PASSWORD})),
        )
        .await?;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["role"], "owner");
    // Once only.
    let (code, _, _) = api
        .send(
            Method::POST,
            "/api/v1/bootstrap",
            Auth::None,
            Some(json!({"secret": secret, "name": "eve@x.test", "password": PASSWORD})),
        )
        .await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // The owner signs in and sees everything; the audit names the bootstrap and not the secret.
    let (code, _, session) = api.sign_in("root@x.test", PASSWORD, None).await?;
    assert_eq!(code, StatusCode::OK, "{session}");
    let token = session["token"].as_str().ok_or("no token")?;
    let (code, _, audit) = api
        .send(
            Method::GET,
            "/api/v1/audit?action=operator.",
            Auth::Bearer(token),
            None,
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{audit}");
    assert!(audit.to_string().contains("operator.bootstrap"), "{audit}");
    assert!(!audit.to_string().contains(&secret) && !audit.to_string().contains(PASSWORD));
    // A restart with an owner prints no secret.
    served.stop()?;
    let again = Served::start(&ws, &[])?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        again.log_lines("cmb_").is_empty(),
        "a secret printed although an owner exists"
    );
    again.stop()?;
    Ok(())
}

fn cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_their_csrf_token_and_end_when_revoked() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "a"])?;
    let owner = owner_token(&ws)?;
    let served = Served::start(&ws, &[])?;
    let api = Api::new(&served)?;
    operator(&api, &owner, "alice@x.test", "admin", &["a"]).await?;

    let (code, headers, s) = api.sign_in("alice@x.test", PASSWORD, None).await?;
    assert_eq!(code, StatusCode::OK, "{s}");
    let set = cookies(&headers);
    let session_cookie = set
        .iter()
        .find(|c| c.starts_with("codexmesh_session="))
        .ok_or("no session cookie")?;
    assert!(
        session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"),
        "{session_cookie}"
    );
    assert!(!session_cookie.contains("Secure"), "plain HTTP: not Secure");
    let csrf_cookie = set
        .iter()
        .find(|c| c.starts_with("codexmesh_csrf="))
        .ok_or("no csrf cookie")?;
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the page's script reads it"
    );
    let token = s["token"].as_str().ok_or("no token")?.to_owned();
    let csrf = s["csrf_token"].as_str().ok_or("no csrf")?.to_owned();
    assert!(session_cookie.starts_with(&format!("codexmesh_session={token};")));

    // Reads need only the cookie; changes also the CSRF token bound to this session.
    let cookie = |csrf| Auth::Cookie {
        session: &token,
        csrf,
    };
    let (code, _, _) = api
        .send(Method::GET, "/api/v1/pools", cookie(None), None)
        .await?;
    assert_eq!(code, StatusCode::OK);
    for wrong in [None, Some("0123456789abcdef0123456789abcdef")] {
        let (code, _, v) = api
            .send(
                Method::POST,
                "/api/v1/pools/a/keys",
                cookie(wrong),
                Some(json!({})),
            )
            .await?;
        assert_eq!(code, StatusCode::FORBIDDEN, "{wrong:?}: {v}");
    }
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/pools/a/keys",
            cookie(Some(&csrf)),
            Some(json!({})),
        )
        .await?;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // The same session as a bearer token needs no CSRF token (a browser never sends it by itself).
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/pools/a/keys",
            Auth::Bearer(&token),
            Some(json!({})),
        )
        .await?;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (_, _, me) = api
        .send(Method::GET, "/api/v1/me", Auth::Bearer(&token), None)
        .await?;
    assert_eq!(
        (me["actor"].as_str(), me["role"].as_str()),
        (Some("operator:alice@x.test"), Some("admin")),
        "{me}"
    );

    // Over HTTPS (the page's origin), the cookies are Secure.
    let (_, headers, _) = api
        .http
        .post(format!("{}/api/v1/session", api.base))
        .header(ORIGIN, "https://gateway.example")
        .json(&json!({"name": "alice@x.test", "password": PASSWORD}))
        .send()
        .await
        .map(|r| (r.status(), r.headers().clone(), ()))?;
    assert!(
        cookies(&headers).iter().all(|c| c.contains("; Secure")),
        "{:?}",
        cookies(&headers)
    );

    // Sign-out ends every session of the operator: cookie and bearer alike.
    let (code, headers, _) = api
        .send(Method::DELETE, "/api/v1/session", cookie(Some(&csrf)), None)
        .await?;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(cookies(&headers)
        .iter()
        .any(|c| c.starts_with("codexmesh_session=;") && c.contains("Max-Age=0")));
    for auth in [Auth::Bearer(&token), cookie(None)] {
        let (code, _, _) = api.send(Method::GET, "/api/v1/pools", auth, None).await?;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }

    // A password change and a role change (by the owner) each end the sessions too.
    for change in [
        (
            Method::PUT,
            "/api/v1/operators/alice@x.test/password",
            json!({"password": "another long password"}),
        ),
        (
            Method::PUT,
            "/api/v1/operators/alice@x.test/role",
            json!({"role": "viewer"}),
        ),
    ] {
        let password = if change.1.ends_with("role") {
            "another long password"
        } else {
            PASSWORD
        };
        let (code, _, s) = api.sign_in("alice@x.test", password, None).await?;
        assert_eq!(code, StatusCode::OK, "{s}");
        let t = s["token"].as_str().ok_or("no token")?.to_owned();
        let (code, _, v) = api
            .send(change.0, change.1, Auth::Bearer(&owner), Some(change.2))
            .await?;
        assert_eq!(code, StatusCode::OK, "{v}");
        let (code, _, _) = api
            .send(Method::GET, "/api/v1/pools", Auth::Bearer(&t), None)
            .await?;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "{} did not revoke the session",
            change.1
        );
    }
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_throttled_and_audited_without_secrets() -> TestResult {
    let ws = Workspace::new()?;
    let owner = owner_token(&ws)?;
    let served = Served::start(&ws, &[])?;
    let api = Api::new(&served)?;
    operator(&api, &owner, "bob@x.test", "viewer", &[]).await?;
    let wrong = "wrong password 12345";
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(api.sign_in("bob@x.test", wrong, None).await?.0);
    }
    assert!(
        codes[..5].iter().all(|c| *c == StatusCode::UNAUTHORIZED),
        "{codes:?}"
    );
    assert_eq!(codes[5], StatusCode::TOO_MANY_REQUESTS, "{codes:?}");
    // Locked: even the right password is refused for now.
    let (code, _, v) = api.sign_in("bob@x.test", PASSWORD, None).await?;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // An unknown name fails like a wrong password.
    let (code, _, unknown) = api.sign_in("nobody@x.test", wrong, None).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (_, _, known) = api.sign_in("carol@x.test", wrong, None).await?;
    assert_eq!(unknown["error"]["message"], known["error"]["message"]);

    let (code, _, audit) = api
        .send(
            Method::GET,
            "/api/v1/audit?action=session.sign_in&limit=50",
            Auth::Bearer(&owner),
            None,
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{audit}");
    let rows = audit.as_array().ok_or("not a list")?;
    assert!(
        rows.iter().any(|r| r["outcome"] == "unauthenticated"),
        "{audit}"
    );
    assert!(
        rows.iter().any(|r| r["outcome"] == "rate_limited"),
        "{audit}"
    );
    assert!(rows.iter().all(|r| r["client"] == "127.0.0.1"), "{audit}");
    let text = audit.to_string();
    assert!(
        !text.contains(wrong) && !text.contains(PASSWORD),
        "a password reached the audit log"
    );

    // The address locks after 20 failures in 15 minutes (attempts at a locked operator count);
    // from then on its attempts, sign-in and bootstrap alike, are refused without a row each.
    let mut locked = false;
    for i in 0..30 {
        let (code, _, _) = api
            .sign_in(&format!("guess{i}@x.test"), wrong, None)
            .await?;
        if code == StatusCode::TOO_MANY_REQUESTS {
            locked = true;
            break;
        }
    }
    assert!(locked, "the address never locked");
    let rows_now = |a: Value| a.as_array().map_or(0, Vec::len);
    let (_, _, before) = api
        .send(
            Method::GET,
            "/api/v1/audit?limit=1000",
            Auth::Bearer(&owner),
            None,
        )
        .await?;
    for _ in 0..5 {
        let (code, _, _) = api.sign_in("bob@x.test", PASSWORD, None).await?;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
        let (code, _, _) = api
            .send(
                Method::POST,
                "/api/v1/bootstrap",
                Auth::None,
                Some(json!({"secret": "cmb_guess", "name": "eve@x.test", "password": PASSWORD})),
            )
            .await?;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    }
    let (_, _, after) = api
        .send(
            Method::GET,
            "/api/v1/audit?limit=1000",
            Auth::Bearer(&owner),
            None,
        )
        .await?;
    assert_eq!(
        rows_now(before),
        rows_now(after),
        "a locked address grew the audit log"
    );
    served.stop()?;
    Ok(())
}

/// The current code of a base32 TOTP secret (SHA-1, 6 digits, 30 s), `offset_steps` away.
fn totp_code(secret_base32: &str, offset_steps: i64) -> Result<String, AnyError> {
    codexmesh_test_kit::leaks::remember(secret_base32);
    let bytes = base32_decode(secret_base32).ok_or("bad base32")?;
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 0, 30, bytes)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    Ok(totp.generate(u64::try_from(now + offset_steps * 30)?))
}

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buf, mut bits) = (Vec::new(), 0u64, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_second_factor_is_set_up_before_anything_else() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "a"])?;
    let owner = owner_token(&ws)?;
    let served = Served::start_env(&ws, &[], &[("CODEXMESH_REQUIRE_TOTP", "true")])?;
    let api = Api::new(&served)?;
    operator(&api, &owner, "dora@x.test", "admin", &["a"]).await?;

    // Without a second factor: a restricted session that may only set one up.
    let (code, _, s) = api.sign_in("dora@x.test", PASSWORD, None).await?;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["totp_setup_required"], true, "{s}");
    let restricted = s["token"].as_str().ok_or("no token")?.to_owned();
    let (code, _, v) = api
        .send(
            Method::GET,
            "/api/v1/pools",
            Auth::Bearer(&restricted),
            None,
        )
        .await?;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    let (code, _, enrolled) = api
        .send(
            Method::POST,
            "/api/v1/me/totp",
            Auth::Bearer(&restricted),
            None,
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{enrolled}");
    let secret = enrolled["secret_base32"]
        .as_str()
        .ok_or("no secret")?
        .to_owned();
    assert!(enrolled["uri"]
        .as_str()
        .is_some_and(|u| u.starts_with("otpauth://totp/")));
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/me/totp/confirm",
            Auth::Bearer(&restricted),
            Some(json!({"code": "000000"})),
        )
        .await?;
    assert!(code.is_client_error(), "a wrong code enables nothing: {v}");
    let (code, _, v) = api
        .send(
            Method::POST,
            "/api/v1/me/totp/confirm",
            Auth::Bearer(&restricted),
            Some(json!({"code": totp_code(&secret, 0)?})),
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{v}");

    // Now sign-in needs a code: the right password alone is asked for it (kind
    // `totp_required`, the dashboard's second step; no session, no cookie), a wrong one is a
    // plain failure; a code is accepted once.
    let (code, headers, v) = api.sign_in("dora@x.test", PASSWORD, None).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["kind"], "totp_required", "{v}");
    assert!(headers.get("set-cookie").is_none());
    let (code, _, v) = api.sign_in("dora@x.test", "wrong password", None).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["kind"], "unauthenticated", "{v}");
    let next = totp_code(&secret, 1)?;
    let (code, _, s) = api.sign_in("dora@x.test", PASSWORD, Some(&next)).await?;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["totp_setup_required"], false, "{s}");
    let full = s["token"].as_str().ok_or("no token")?.to_owned();
    let (code, _, _) = api
        .send(Method::GET, "/api/v1/pools", Auth::Bearer(&full), None)
        .await?;
    assert_eq!(code, StatusCode::OK);
    let (code, _, v) = api.sign_in("dora@x.test", PASSWORD, Some(&next)).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "a replayed code: {v}");
    // API tokens are not sessions: the setting does not apply to them.
    let (code, _, _) = api
        .send(Method::GET, "/api/v1/pools", Auth::Bearer(&owner), None)
        .await?;
    assert_eq!(code, StatusCode::OK);
    served.stop()?;
    Ok(())
}
