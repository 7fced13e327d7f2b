//! TLS everywhere (issue 16): upstream certificates verified by default in Envoy and in the
//! control plane's own calls, with a named CA bundle (`upstream_ca_file`) as the only way to
//! trust a private CA; the gRPC push channel and the admin API over TLS with required client
//! certificates, Envoy presenting its own.
//!
//! Certificates are made at run time (the kit's `tls::Pki`, rcgen); the simulator serves HTTPS
//! with a fresh self-signed certificate.

use std::time::{Duration, Instant};

use codexmesh_test_kit::connect_proxy::ConnectProxy;
use codexmesh_test_kit::stack::{CpEnv, StackOptions};
use codexmesh_test_kit::tls::Pki;
use codexmesh_test_kit::{ControlPlane, Envoy, Stack};

/// An upstream whose certificate chains to nothing trusted is refused: by the control plane's
/// refresh (the CLI's `account refresh`, the same client `serve` uses) and by Envoy's upstream
/// cluster. Naming the simulator's certificate in `CODEXMESH_UPSTREAM_CA_FILE` is what makes
/// both work (the stack serves through it, Envoy matching the IP SAN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_refused_by_envoy_and_the_control_plane() {
    let started = Instant::now();
    let stack = Stack::start_with(StackOptions {
        sim_tls: true,
        ..StackOptions::accounts(1).without_quota_polling()
    })
    .await
    .unwrap();
    // Trusted through the named bundle: pooled traffic over HTTPS, and a refresh.
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ok = stack
        .cp
        .cli_json(&["account", "refresh", "acct-0"])
        .unwrap();
    assert_eq!(ok["refreshed"], true, "{ok}");

    // The same settings without the bundle: the public roots only.
    let mut untrusting = stack.cp.env.clone();
    untrusting
        .extra
        .retain(|(k, _)| k != "CODEXMESH_UPSTREAM_CA_FILE");
    let untrusting = ControlPlane::new(&stack.art, untrusting, stack.dir.path());
    let refused = untrusting.cli(&["account", "refresh", "acct-0"]).unwrap();
    assert_ne!(
        refused.code, 0,
        "refresh against an untrusted certificate succeeded: {refused:?}"
    );
    let said = format!("{}{}", refused.stdout, refused.stderr).to_lowercase();
    assert!(
        said.contains("certificate") || said.contains("unknownissuer"),
        "the refusal names the certificate: {said}"
    );

    // Envoy with the system bundle: every attempt fails verification, nothing reaches the
    // simulator.
    let grpc = stack.cp.grpc_addr.unwrap();
    let bootstrap = Envoy::render_bootstrap(
        &untrusting,
        grpc,
        None,
        stack.dir.path(),
        "envoy-untrusting",
    )
    .unwrap();
    let yaml = std::fs::read_to_string(&bootstrap).unwrap();
    assert!(
        yaml.contains("/etc/ssl/certs/ca-certificates.crt"),
        "system bundle"
    );
    let envoy2 = Envoy::run(
        &stack.art,
        &bootstrap,
        &stack.cp.env.push_token,
        stack.dir.path(),
        "envoy-untrusting",
    )
    .await
    .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut verify_failures = 0u64;
    let mut answers = Vec::new();
    while verify_failures == 0 && Instant::now() < deadline {
        let (status, body) = stack.turn_at(&envoy2, &stack.key).await.unwrap();
        assert_ne!(status, 200, "served through an untrusted upstream: {body}");
        answers.push(status);
        verify_failures = ssl_stat(&envoy2, "fail_verify_error").await;
        if verify_failures == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        verify_failures > 0,
        "Envoy never failed a certificate check (answers {answers:?})"
    );
    assert!(
        stack.sim.turn_requests().await.unwrap().is_empty(),
        "a request reached the untrusted upstream"
    );
    eprintln!(
        "untrusted upstream refused ({verify_failures} verify failures, answers {answers:?}) in {:?}",
        started.elapsed()
    );
}

/// The sum of Envoy's `cluster.*.ssl.<name>` counters.
async fn ssl_stat(envoy: &Envoy, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/stats?filter=ssl", envoy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("cluster.") && l.contains(&format!(".ssl.{name}:")))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

/// `serve` with TLS and required client certificates on both listeners: Envoy, presenting its
/// certificate, gets snapshots over mTLS and serves pooled traffic; a client without a
/// certificate, or with one from another CA, is refused by the gRPC channel and the admin API,
/// and one with the right certificate is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_channel_and_admin_api_require_client_certificates() {
    let started = Instant::now();
    let certs_dir = codexmesh_test_kit::test_dir("codexmesh-pki-").unwrap();
    let pki = Pki::create(certs_dir.path()).unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let setting = |k: &str, p: &std::path::Path| (k.to_owned(), path(p));
    let stack = Stack::start_with(StackOptions {
        cp_env: vec![
            setting("CODEXMESH_GRPC_TLS_CERT", &pki.server_cert),
            setting("CODEXMESH_GRPC_TLS_KEY", &pki.server_key),
            setting("CODEXMESH_GRPC_TLS_CLIENT_CA", &pki.ca),
            setting("CODEXMESH_ADMIN_TLS_CERT", &pki.server_cert),
            setting("CODEXMESH_ADMIN_TLS_KEY", &pki.server_key),
            setting("CODEXMESH_ADMIN_TLS_CLIENT_CA", &pki.ca),
        ],
        envoy_bootstrap_args: vec![
            "--control-plane-ca".into(),
            path(&pki.ca),
            "--client-cert".into(),
            path(&pki.client_cert),
            "--client-key".into(),
            path(&pki.client_key),
        ],
        ..StackOptions::accounts(1)
    })
    .await
    .unwrap();
    let serving = started.elapsed();
    // Envoy got its snapshot over mTLS (start_with waited for a pooled 200); once more.
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let yaml = stack.envoy.config_dump().await.unwrap();
    assert!(
        yaml.contains("UpstreamTlsContext"),
        "the control-plane cluster speaks TLS"
    );

    let good = || Pki::identity(&pki.client_cert, &pki.client_key).unwrap();
    let rogue = || Pki::identity(&pki.rogue_cert, &pki.rogue_key).unwrap();
    let admin = format!("https://{}/healthz", stack.cp.admin_addr.unwrap());
    let grpc = format!(
        "https://{}/codexmesh.v1.Mesh/Report",
        stack.cp.grpc_addr.unwrap()
    );

    // The admin API.
    let ok = pki
        .client(Some(good()), false)
        .unwrap()
        .get(&admin)
        .send()
        .await;
    assert_eq!(ok.unwrap().status(), 200);
    for (who, id) in [("no certificate", None), ("another CA", Some(rogue()))] {
        let r = pki.client(id, false).unwrap().get(&admin).send().await;
        assert!(r.is_err(), "admin API answered a client with {who}: {r:?}");
    }
    // Plain HTTP to a TLS listener gets nothing useful either.
    let plain = reqwest::get(format!("http://{}/healthz", stack.cp.admin_addr.unwrap())).await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP served"
    );

    // The gRPC channel (HTTP/2): the right certificate gets a gRPC answer, the others nothing.
    let call = |id| {
        let client = pki.client(id, true).unwrap();
        let grpc = grpc.clone();
        async move {
            client
                .post(grpc)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(vec![0u8, 0, 0, 0, 0])
                .send()
                .await
        }
    };
    let answered = call(Some(good())).await.unwrap();
    assert!(
        answered.headers().contains_key("grpc-status") || answered.status() == 200,
        "{answered:?}"
    );
    for (who, id) in [("no certificate", None), ("another CA", Some(rogue()))] {
        let r = call(id).await;
        assert!(r.is_err(), "gRPC answered a client with {who}: {r:?}");
    }
    eprintln!(
        "mTLS stack serving in {serving:?}; checks done in {:?}",
        started.elapsed()
    );
}

/// Half a TLS configuration is refused before anything listens, naming the missing setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_tls_configuration_is_refused() {
    let dir = codexmesh_test_kit::test_dir("codexmesh-tls-half-").unwrap();
    let art = codexmesh_test_kit::Artifacts::locate().unwrap();
    let sim = codexmesh_test_kit::Sim::start().unwrap();
    let env = CpEnv::new(
        dir.path(),
        &sim,
        &art,
        vec![("CODEXMESH_GRPC_TLS_CERT".into(), "/nonexistent.pem".into())],
    );
    let cp = ControlPlane::new(&art, env, dir.path());
    let r = cp.cli(&["status"]).unwrap();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("grpc_tls_key"), "{}", r.stderr);
}

/// An account's `egress_proxy`: its refresh and its quota poll tunnel through that proxy
/// (CONNECT to the HTTPS simulator), another account's refresh does not, and with the proxy gone the account's refresh
/// fails rather than going direct. Bad values are refused naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_refresh_goes_through_its_egress_proxy_and_only_its() {
    let started = Instant::now();
    let mut proxy = ConnectProxy::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        sim_tls: true,
        ..StackOptions::accounts(2).without_quota_polling()
    })
    .await
    .unwrap();
    let url = format!("http://{}", proxy.addr);
    let set = stack
        .cp
        .cli_json(&["account", "set", "acct-0", "--egress-proxy", &url])
        .unwrap();
    assert_eq!(set["egress_proxy"], url.as_str(), "{set}");
    for bad in [
        "https://proxy:3128",
        "http://user:pw@proxy:3128",
        "proxy:3128",
    ] {
        let r = stack
            .cp
            .cli(&["account", "set", "acct-1", "--egress-proxy", bad])
            .unwrap();
        assert_ne!(r.code, 0, "{bad} accepted");
        assert!(r.stderr.contains("http://HOST:PORT"), "{}", r.stderr);
    }

    let before = proxy.tunnels();
    let r = stack
        .cp
        .cli_json(&["account", "refresh", "acct-1"])
        .unwrap();
    assert_eq!(r["refreshed"], true, "{r}");
    assert_eq!(proxy.tunnels(), before, "acct-1 has no proxy: direct");
    let r = stack
        .cp
        .cli_json(&["account", "refresh", "acct-0"])
        .unwrap();
    assert_eq!(r["refreshed"], true, "{r}");
    let through = proxy.tunnels() - before;
    assert!(
        through >= 1,
        "acct-0's refresh did not tunnel through its proxy"
    );

    // The quota polls too: polling the pool opens a tunnel for acct-0 (acct-1 goes direct).
    let before_polls = proxy.tunnels();
    let polled = stack
        .cp
        .cli_json(&["pool", "refresh-quota", "team"])
        .unwrap();
    assert_eq!(polled["polled"], 2, "{polled}");
    assert!(
        proxy.tunnels() > before_polls,
        "acct-0's quota poll did not tunnel through its proxy"
    );

    // `apply -f` names it too: acct-1 through the proxy, then back to direct.
    let doc = stack.dir.path().join("egress.yaml");
    std::fs::write(
        &doc,
        format!(
            "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {{name: team}}\nspec:\n  \
             accounts:\n    - {{account: acct-0}}\n    - {{account: acct-1, egress_proxy: \"{url}\"}}\n"
        ),
    )
    .unwrap();
    stack
        .cp
        .cli_json(&["apply", "-f", doc.to_str().unwrap()])
        .unwrap();
    let listed = stack.cp.cli_json(&["account", "list"]).unwrap();
    let text = listed.to_string();
    assert_eq!(text.matches(url.as_str()).count(), 2, "{listed}");
    let before_apply = proxy.tunnels();
    let r = stack
        .cp
        .cli_json(&["account", "refresh", "acct-1"])
        .unwrap();
    assert_eq!(r["refreshed"], true, "{r}");
    assert!(
        proxy.tunnels() > before_apply,
        "acct-1's proxy from apply -f unused"
    );
    stack
        .cp
        .cli_json(&["account", "set", "acct-1", "--egress-proxy", "none"])
        .unwrap();

    // The proxy gone: acct-0 fails, it never goes direct; acct-1 still refreshes.
    proxy.stop().await;
    let r = stack.cp.cli(&["account", "refresh", "acct-0"]).unwrap();
    assert_ne!(r.code, 0, "refreshed without its proxy: {}", r.stdout);
    let r = stack
        .cp
        .cli_json(&["account", "refresh", "acct-1"])
        .unwrap();
    assert_eq!(r["refreshed"], true, "{r}");
    // Cleared: direct again.
    let cleared = stack
        .cp
        .cli_json(&["account", "set", "acct-0", "--egress-proxy", "none"])
        .unwrap();
    assert!(cleared["egress_proxy"].is_null(), "{cleared}");
    let r = stack
        .cp
        .cli_json(&["account", "refresh", "acct-0"])
        .unwrap();
    assert_eq!(r["refreshed"], true, "{r}");
    eprintln!(
        "egress proxy: {through} tunnel(s) for acct-0's refresh, 0 for acct-1's, in {:?}",
        started.elapsed()
    );
}
