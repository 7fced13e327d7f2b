//! What `serve` and `up` tell the person who started them, besides the listeners: with no owner
//! yet, the one-time secret that creates the first one.
//!
//! Rules: printed to stderr, never logged through `tracing` (log shipping must not carry it);
//! nothing is printed once an owner exists; a failure is a warning, never a reason to stop.

use codexmesh_engine::ops::{self, Ops};

/// With no owner yet, prints a one-time secret (valid for an hour) that creates the first owner
/// through the admin API at `admin`.
pub(crate) async fn bootstrap_secret(ops: &Ops, admin: std::net::SocketAddr) {
    match ops::operators::bootstrap_secret(ops).await {
        Ok(issued) => {
            let secret = issued.value.secret;
            eprintln!(
                "\nNo owner exists yet. Create the first owner within the hour (the secret works \
                 once):\n  curl -s http://{admin}/api/v1/bootstrap -H 'content-type: \
                 application/json' \\\n    -d '{{\"secret\": \"{}\", \"name\": \"you@example.com\", \
                 \"password\": \"…\"}}'\nor on this host: codexmesh operator create NAME --role \
                 owner\n",
                secret.expose()
            );
        }
        // An owner exists: nothing to say.
        Err(e) if e.kind() == ops::ErrorKind::Conflict => {}
        Err(e) => tracing::warn!(error = %e, "cannot issue the first-owner bootstrap secret"),
    }
}
