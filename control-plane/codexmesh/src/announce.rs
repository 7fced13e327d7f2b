//! What `serve` and `up` tell the person who started them, besides the listeners: with no owner
//! yet, the one-time secret that creates the first one.
//!
//! Rules: the secret is printed only to a terminal (stderr), never logged through `tracing`:
//! when stderr is not a terminal (a container, a service manager, a test) it is shipped as a log,
//! so only the way to get one is printed (`codexmesh operator bootstrap` on the host, or
//! `operator create`), and no secret is issued. Nothing is printed once an owner exists; a
//! failure is a warning, never a reason to stop.

use std::io::IsTerminal;

use codexmesh_engine::ops::{self, Ops};

/// With no owner yet, prints a one-time secret (valid for an hour) that creates the first owner
/// through the admin API at `admin`, when a person is watching; else how to get one.
pub(crate) async fn bootstrap_secret(ops: &Ops, admin: std::net::SocketAddr) {
    if !std::io::stderr().is_terminal() {
        match ops::operators::owner_exists(ops).await {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "\nNo owner exists yet. On this host, `codexmesh operator bootstrap` prints a \
                 one-time secret for POST http://{admin}/api/v1/bootstrap, or `codexmesh \
                 operator create NAME --role owner` creates one directly. (The secret is printed \
                 only on a terminal: this output may be shipped as a log.)\n"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot tell whether an owner exists"),
        }
        return;
    }
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
