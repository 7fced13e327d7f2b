//! `codexmesh up` with a stand-in Envoy (a tiny Python HTTP server answering `/ready` on the
//! admin port), so the flow is covered without a real Envoy or the wasm module.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use codexmesh_test_kit::{free_port, AnyError, Cli, TestResult, Workspace};

const FAKE_ENVOY: &str = r#"#!/usr/bin/env python3
import http.server, json, os, sys, threading
with open(os.environ["FAKE_ENVOY_RECORD"], "w") as f:
    json.dump({"args": sys.argv[1:], "pid": os.getpid(),
               "token": os.environ.get("CODEXMESH_PUSH_TOKEN")}, f)
exit_after = os.environ.get("FAKE_ENVOY_EXIT_AFTER_READY")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        # Arm the exit first: a prober that hangs up early must not cancel it.
        if exit_after and self.path == "/ready":
            threading.Timer(float(exit_after), lambda: os._exit(3)).start()
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b"LIVE\n")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["FAKE_ENVOY_ADMIN_PORT"])), H).serve_forever()
"#;

fn python_available() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Up {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Up {
    fn start(
        ws: &Workspace,
        fake: &Path,
        exit_after_ready: Option<&str>,
    ) -> Result<Self, AnyError> {
        let wasm = ws.path().join("filter.wasm");
        std::fs::write(&wasm, b"\0asm")?;
        let admin_port = free_port()?;
        let mut cmd = ws.command();
        cmd.args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--gateway-listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--envoy-admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--envoy-bin")
        .arg(fake)
        .arg("--wasm")
        .arg(&wasm)
        .arg("up")
        .env("FAKE_ENVOY_ADMIN_PORT", admin_port.to_string())
        .env("FAKE_ENVOY_RECORD", ws.path().join("envoy-record.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(s) = exit_after_ready {
            cmd.env("FAKE_ENVOY_EXIT_AFTER_READY", s);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("stdout")?;
        let stderr = child.stderr.take().ok_or("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[up] {l}");
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Ok(Self { child, lines })
    }

    /// Collects output lines until one contains `needle` (bounded).
    fn until(&self, needle: &str, within: Duration) -> Result<Vec<String>, AnyError> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("no {needle:?} within {within:?}; saw {seen:#?}"))?;
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return Ok(seen);
            }
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Result<i32, AnyError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err("up did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn install_fake(ws: &Workspace) -> Result<PathBuf, AnyError> {
    use std::os::unix::fs::PermissionsExt;
    let p = ws.path().join("fake-envoy");
    std::fs::write(&p, FAKE_ENVOY)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

#[test]
fn up_runs_envoy_prints_config_and_stops_it() -> TestResult {
    if !python_available() {
        eprintln!("note: up test skipped: python3 is not available for the stand-in Envoy");
        return Ok(());
    }
    let ws = Workspace::new()?;
    let fake = install_fake(&ws)?;

    let mut up = Up::start(&ws, &fake, None)?;
    let out = up.until("export CODEXMESH_API_KEY=", Duration::from_secs(60))?;
    let text = out.join("\n");
    assert!(text.contains("codexmesh serving grpc=127.0.0.1:"), "{text}");
    assert!(text.contains("base_url = \"http://127.0.0.1:"), "{text}");
    assert!(text.contains("/backend-api/codex\""), "{text}");
    assert!(text.contains("supports_websockets = true"), "{text}");
    let export = out.last().ok_or("no lines")?;
    let key = export
        .split("CODEXMESH_API_KEY=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or("no key")?
        .to_owned();
    assert!(key.starts_with("cmk_") && key.len() == 44, "{key}");
    // Claude Code's and Gemini CLI's snippets follow, for the same gateway and key.
    let more = up.until("export CODE_ASSIST_ENDPOINT=", Duration::from_secs(20))?;
    let more = more.join("\n");
    let gateway = text
        .split("base_url = \"")
        .nth(1)
        .and_then(|s| s.split("/backend-api").next())
        .ok_or("no gateway in the Codex snippet")?;
    for line in [
        format!("export ANTHROPIC_BASE_URL={gateway}"),
        "export ANTHROPIC_AUTH_TOKEN=$CODEXMESH_API_KEY".to_owned(),
        "\"selectedType\": \"oauth-personal\"".to_owned(),
        "export GOOGLE_GENAI_USE_GCA=true".to_owned(),
        "export GOOGLE_CLOUD_ACCESS_TOKEN=$CODEXMESH_API_KEY".to_owned(),
        format!("export CODE_ASSIST_ENDPOINT={gateway}"),
    ] {
        assert!(more.contains(&line), "{line} missing from:\n{more}");
    }

    // Envoy got the bootstrap path and the flags; the token only through its environment.
    let bootstrap = ws.data_dir().join("envoy").join("bootstrap.yaml");
    assert!(bootstrap.is_file());
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        ws.path().join("envoy-record.json"),
    )?)?;
    let args: Vec<&str> = record["args"]
        .as_array()
        .ok_or("args")?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "--config-path");
    assert_eq!(
        Path::new(args[1]),
        std::fs::canonicalize(&bootstrap)?.as_path()
    );
    assert!(args.contains(&"--disable-hot-restart"));
    assert_eq!(&args[args.len() - 2..], ["--log-level", "warn"]);
    let token = std::fs::read_to_string(ws.data_dir().join("push.token"))?;
    assert_eq!(record["token"].as_str(), Some(token.trim()));
    assert!(!std::fs::read_to_string(&bootstrap)?.contains(token.trim()));
    assert!(!text.contains(token.trim()), "push token printed");

    // The pool and key were created; SIGTERM stops up and its Envoy.
    let status = ws.ok_json(&["status"])?;
    assert_eq!(status["pools"][0]["name"], "default");
    assert_eq!(status["pools"][0]["keys"]["active"], 1);
    let envoy_pid = record["pid"].as_i64().ok_or("pid")?;
    let pid = i32::try_from(up.child.id())?;
    // SAFETY: kill(2) on the PID of our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert_eq!(up.wait_exit(Duration::from_secs(20))?, 0);
    assert!(
        !Path::new(&format!("/proc/{envoy_pid}")).exists(),
        "Envoy still running after up exited"
    );

    // Second run: the pool exists, so no new key; Envoy dying makes up fail loudly.
    let mut up = Up::start(&ws, &fake, Some("0.5"))?;
    let out = up.until("export CODEXMESH_API_KEY=", Duration::from_secs(60))?;
    assert!(out
        .join("\n")
        .contains("codexmesh key create --pool default"));
    up.until("Envoy exited unexpectedly", Duration::from_secs(20))?;
    assert_eq!(up.wait_exit(Duration::from_secs(20))?, 1);
    assert_eq!(ws.ok_json(&["status"])?["pools"][0]["keys"]["active"], 1);
    Ok(())
}

#[test]
fn up_refuses_without_a_wasm_module() -> TestResult {
    let ws = Workspace::new()?;
    let r = ws.run(&["--wasm", "/nonexistent/filter.wasm", "up"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(
        !ws.db_path().exists(),
        "nothing is created before the checks pass"
    );
    Ok(())
}

#[test]
fn up_refuses_tls_on_the_push_channel_it_cannot_dial() -> TestResult {
    let ws = Workspace::new()?;
    let cert = ws.path().join("cp.pem");
    std::fs::write(&cert, "not read before the refusal")?;
    let r: codexmesh_test_kit::Run = ws
        .command()
        .env("CODEXMESH_GRPC_TLS_CERT", &cert)
        .env("CODEXMESH_GRPC_TLS_KEY", &cert)
        .arg("up")
        .output()?
        .into();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("envoy-bootstrap --control-plane-ca"),
        "{}",
        r.stderr
    );
    assert!(
        !ws.db_path().exists(),
        "nothing is created before the checks pass"
    );
    Ok(())
}
