//! The operator dashboard, served by the admin listener itself: the files under
//! `control-plane/engine/dashboard/` are compiled into the binary (rust-embed, in every build
//! profile) and nothing is fetched from anywhere else at run time.
//!
//! Rules this module keeps:
//! - Only files that were embedded are served; a path is looked up in the embedded table, never
//!   joined onto a folder, so `..` and friends find nothing.
//! - `/ui/assets/…` are the files; every other `/ui/…` path is the page (`index.html`), whose
//!   script routes on the path, so a link to `/ui/pools/team-a` survives a reload. `/invite` is
//!   the open invite page (`invite.html`, no sign-in), with the same headers.
//! - Every answer carries a strict Content-Security-Policy (scripts, styles, images and
//!   connections from this origin only; no inline script; no framing), `nosniff` and no referrer.
//!   These routes sit outside the API's `no-store` layer (see `api::router`).
//! - Files are revalidated (`no-cache` with a SHA-256 ETag, `304` when unchanged), so an upgrade
//!   is picked up at the next load without fingerprinted names.
//! - The dashboard holds no data of its own: every number on it comes from `/api/v1` with the
//!   operator's session, so the API's rules (roles, tenants, CSRF) are the dashboard's rules.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

#[derive(rust_embed::Embed)]
#[folder = "dashboard/"]
struct Files;

/// What the browser may load and run: this origin only, no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes (`/`, `/ui`, `/ui/…`), to merge into the admin router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/assets/{*file}", get(asset))
        .route("/ui/{*route}", get(page))
        .route("/invite", get(invite_page))
}

/// The open invite page (no sign-in): a person enters an invite code (prefilled from the
/// link's fragment) and a name, and gets a pool key once (`invite.js`).
async fn invite_page(headers: HeaderMap) -> Response {
    serve("invite.html", &headers)
}

/// The single page, whatever the route under `/ui/` (the script reads the path).
async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    if file == "index.html" {
        return not_found();
    }
    serve(&file, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(file) = Files::get(name) else {
        return not_found();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = file.data.into_owned().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        );
        r
    };
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(response)
}

fn not_found() -> Response {
    secure((StatusCode::NOT_FOUND, "not found\n").into_response())
}

fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The types of the files the dashboard is made of; anything else is served as bytes.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json" | "webmanifest") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_are_embedded() {
        assert!(Files::get("index.html").is_some());
        assert!(Files::get("app.js").is_some());
        assert!(Files::get("style.css").is_some());
        assert!(Files::get("../Cargo.toml").is_none());
    }

    #[test]
    fn every_embedded_file_has_a_known_type() {
        for name in Files::iter() {
            assert_ne!(
                content_type(&name),
                "application/octet-stream",
                "{name} would be served without a type"
            );
        }
    }
}
