//! The deployment artifacts, checked (issue 16 point 1): the Kustomize base and overlays
//! (`deploy/kustomize`), the Istio objects (`deploy/istio`), the Envoy fragments
//! (`envoy/fragments`), `docker-compose.yml` and the Dockerfile.
//!
//! Rules these tests keep:
//! - every failure names the file and the object (kind/name, fragment, config) it is about;
//! - each validator is shown to refuse a broken copy, so a pass means something;
//! - the tools come from `scripts/setup.sh --test` (`.venv`: kubernetes-validate, PyYAML,
//!   jsonschema; `.venv/kubernetes-client`: Debian's kubectl for `kubectl kustomize`; Debian's
//!   docker-compose). Missing, a test prints that it skipped, unless `CI` or
//!   `CODEXMESH_REQUIRE_DEPLOY_TOOLS=1` is set: then it fails;
//! - nothing reaches the network: renders, schemas and `envoy --mode validate` are offline, and
//!   the end-to-end test runs on loopback ports the OS picks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use codexmesh_test_kit::{repo_root, Envoy, Stack};
use serde_json::Value;

fn root() -> PathBuf {
    repo_root()
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

fn kubectl() -> PathBuf {
    root().join(".venv/kubernetes-client/usr/bin/kubectl")
}

fn check_tool() -> PathBuf {
    root().join("tests/deploy/deploy_check.py")
}

/// Whether the tools are there; when not, prints that the test skipped (or fails where they are
/// required).
fn tools_present(test: &str, needs: &[&str]) -> bool {
    let mut missing = Vec::new();
    for need in needs {
        let ok = match *need {
            "python" => Command::new(python())
                .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "kubectl" => kubectl().exists(),
            "docker-compose" => Command::new("docker-compose")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success()),
            other => panic!("unknown tool {other}"),
        };
        if !ok {
            missing.push(*need);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var_os("CI").is_some()
        || std::env::var("CODEXMESH_REQUIRE_DEPLOY_TOOLS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {missing:?} missing: run scripts/setup.sh --test"
    );
    println!("skipped {test}: {missing:?} missing (scripts/setup.sh --test installs them)");
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`, which must succeed; returns its stdout.
fn ok(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

fn deploy_check(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(check_tool()).args(args);
    cmd
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The YAML documents of `file` as JSON values.
fn documents(file: &Path) -> Vec<Value> {
    let json = ok(
        &mut deploy_check(&["to-json", path_str(file)]),
        &format!("reading {}", file.display()),
    );
    match serde_json::from_str(&json).expect("to-json prints JSON") {
        Value::Array(docs) => docs,
        other => panic!("{}: not a list of documents: {other}", file.display()),
    }
}

fn object<'a>(docs: &'a [Value], source: &str, kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n == name || n.starts_with(&format!("{name}-")))
        })
        .unwrap_or_else(|| panic!("{source}: no {kind}/{name} rendered"))
}

/// Envoy loads `config` in validate mode; returns whether it did and its last log lines.
fn envoy_validates(envoy: &Path, config: &Path) -> (bool, String) {
    let out = run(Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(config)
        .env("CODEXMESH_PUSH_TOKEN", "validate-only"));
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let tail: Vec<&str> = log.lines().rev().take(6).collect();
    (
        out.status.success(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    )
}

fn envoy_bin() -> PathBuf {
    codexmesh_test_kit::bin::envoy().expect("envoy (ENVOY_BIN or scripts/setup.sh)")
}

fn wasm() -> PathBuf {
    let path =
        codexmesh_test_kit::bin::target_dir().join("wasm32-wasip1/release/codexmesh_filter.wasm");
    let path = std::env::var_os("CODEXMESH_WASM")
        .map(PathBuf::from)
        .unwrap_or(path);
    assert!(path.exists(), "{}: run scripts/build.sh", path.display());
    std::fs::canonicalize(&path).expect("wasm path")
}

fn write(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ------------------------------------------------------------------------------ Kubernetes

fn kustomize_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![root().join("deploy/kustomize/base")];
    let overlays = root().join("deploy/kustomize/overlays");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&overlays)
        .expect("deploy/kustomize/overlays")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no overlay under {}", overlays.display());
    dirs.extend(found);
    dirs
}

fn env_names(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn secret_ref(container: &Value, source: &str, var: &str) {
    let env = env_names(container);
    let (_, e) = env
        .iter()
        .find(|(n, _)| n == var)
        .unwrap_or_else(|| panic!("{source}: container {} lacks {var}", container["name"]));
    assert!(
        e["valueFrom"]["secretKeyRef"]["name"].is_string() && e.get("value").is_none(),
        "{source}: {var} must come from a Secret (secretKeyRef), not a literal: {e}"
    );
}

fn pod_rules(dep: &Value, source: &str) {
    let name = dep["metadata"]["name"].as_str().unwrap_or("?");
    let spec = &dep["spec"]["template"]["spec"];
    assert!(
        dep["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
        "{source}: Deployment/{name} must run 2 or more replicas"
    );
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"], true,
        "{source}: Deployment/{name}: pod securityContext.runAsNonRoot"
    );
    assert!(
        spec["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
            && spec["affinity"]["podAntiAffinity"].is_object(),
        "{source}: Deployment/{name}: topology spread and anti-affinity"
    );
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let cname = c["name"].as_str().unwrap_or("?");
        for limit in ["requests", "limits"] {
            assert!(
                c["resources"][limit]["cpu"].is_string()
                    && c["resources"][limit]["memory"].is_string(),
                "{source}: Deployment/{name} container {cname}: resources.{limit}"
            );
        }
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{source}: Deployment/{name} container {cname}: allowPrivilegeEscalation"
        );
    }
}

fn has_pdb(docs: &[Value], source: &str, deployment: &Value) {
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
    assert!(
        docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"
            && &d["spec"]["selector"]["matchLabels"] == labels),
        "{source}: no PodDisruptionBudget selects Deployment/{name}"
    );
}

/// Runs the gateway's init container script as rendered, its paths moved under `scratch`: the
/// module is copied, the pod's name becomes the node id in both places it is named, and Envoy
/// loads the bootstrap it leaves.
fn init_container_leaves_a_bootstrap_envoy_loads(
    source: &str,
    init: &Value,
    configmap: &Value,
    scratch: &Path,
) {
    let sandbox = scratch.join(format!("init-{}", source.replace('/', "_")));
    for sub in ["opt", "run", "etc"] {
        std::fs::create_dir_all(sandbox.join(sub)).unwrap();
    }
    let (opt, run_dir, etc) = (
        sandbox.join("opt"),
        sandbox.join("run"),
        sandbox.join("etc"),
    );
    std::fs::copy(wasm(), opt.join("codexmesh_filter.wasm")).unwrap();
    write(
        &etc.join("envoy.yaml"),
        configmap["data"]["envoy.yaml"].as_str().unwrap_or_default(),
    );
    let script = init["args"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: the init container has no script"))
        .replace("/opt/codexmesh/", &format!("{}/", opt.display()))
        .replace("/run/codexmesh/", &format!("{}/", run_dir.display()))
        .replace("/etc/codexmesh/", &format!("{}/", etc.display()));
    let pod = "codexmesh-gateway-5d8f7c9b4-x2x7q";
    ok(
        Command::new("sh")
            .args(["-c", &script])
            .env("POD_NAME", pod),
        &format!("{source}: Deployment/codexmesh-gateway init container install-module"),
    );
    assert_eq!(
        std::fs::metadata(run_dir.join("codexmesh_filter.wasm"))
            .map(|m| m.len())
            .ok(),
        std::fs::metadata(wasm()).map(|m| m.len()).ok(),
        "{source}: the init container did not copy the module"
    );
    let bootstrap = read(&run_dir.join("envoy.yaml"));
    assert!(
        !bootstrap.contains("__POD_NAME__")
            && bootstrap.contains(&format!("id: \"{pod}\""))
            && bootstrap.contains(&format!("\\\"node_id\\\":\\\"{pod}\\\"")),
        "{source}: the init container must make the pod's name the node id (Envoy's and the \
         module's)"
    );
    let runnable = run_dir.join("envoy-validate.yaml");
    write(
        &runnable,
        &bootstrap.replace(
            "/run/codexmesh/codexmesh_filter.wasm",
            path_str(&run_dir.join("codexmesh_filter.wasm")),
        ),
    );
    let (valid, log) = envoy_validates(&envoy_bin(), &runnable);
    assert!(
        valid,
        "{source}: the bootstrap the gateway's init container leaves: Envoy refused it:\n{log}"
    );
}

#[test]
fn kustomize_renders_and_every_object_passes_the_kubernetes_schemas() {
    if !tools_present(
        "kustomize_renders_and_every_object_passes_the_kubernetes_schemas",
        &["python", "kubectl"],
    ) {
        return;
    }
    let dir = codexmesh_test_kit::test_dir("codexmesh-deploy-k8s-").unwrap();
    for kdir in kustomize_dirs() {
        let source = kdir
            .strip_prefix(root())
            .unwrap_or(&kdir)
            .display()
            .to_string();
        let rendered = ok(
            Command::new(kubectl()).arg("kustomize").arg(&kdir),
            &format!("kubectl kustomize {source}"),
        );
        let file = dir
            .path()
            .join(format!("{}.yaml", source.replace('/', "_")));
        write(&file, &rendered);
        let report = ok(
            &mut deploy_check(&["validate-k8s", &source, path_str(&file)]),
            &format!("validating {source}"),
        );
        println!("{}", report.trim());
        let docs = documents(&file);

        let cp = object(&docs, &source, "Deployment", "codexmesh-control-plane");
        pod_rules(cp, &source);
        has_pdb(&docs, &source, cp);
        let c = &cp["spec"]["template"]["spec"]["containers"][0];
        for var in [
            "CODEXMESH_STORE",
            "CODEXMESH_PUSH_TOKEN",
            "CODEXMESH_MASTER_KEY",
        ] {
            secret_ref(c, &source, var);
        }
        assert_eq!(
            c["args"][0], "serve",
            "{source}: the control plane runs `serve`"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{source}"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{source}"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin", "{source}");
        let grpc = object(&docs, &source, "Service", "codexmesh-grpc");
        assert_eq!(
            grpc["spec"]["clusterIP"], "None",
            "{source}: Service/codexmesh-grpc is headless (each Envoy resolves every replica)"
        );
        assert_eq!(grpc["spec"]["ports"][0]["port"], 18090, "{source}");
        object(&docs, &source, "Service", "codexmesh-admin");

        let gw = object(&docs, &source, "Deployment", "codexmesh-gateway");
        pod_rules(gw, &source);
        has_pdb(&docs, &source, gw);
        object(&docs, &source, "Service", "codexmesh-gateway");
        let pod = &gw["spec"]["template"]["spec"];
        secret_ref(&pod["containers"][0], &source, "CODEXMESH_PUSH_TOKEN");
        let init = &pod["initContainers"][0];
        assert!(
            init["args"][0]
                .as_str()
                .is_some_and(|a| a.contains("/opt/codexmesh/codexmesh_filter.wasm")),
            "{source}: the init container copies the module out of the codexmesh image: {init}"
        );
        assert!(
            pod["volumes"].as_array().is_some_and(|v| v
                .iter()
                .any(|v| v["name"] == "run" && v["emptyDir"].is_object())),
            "{source}: the module goes into an emptyDir"
        );
        // The ConfigMap holds the rendered bootstrap as it is in the repository, and the
        // Deployment mounts that ConfigMap (kustomize renamed it with its hash).
        let cm = object(&docs, &source, "ConfigMap", "codexmesh-gateway-bootstrap");
        assert_eq!(
            cm["data"]["envoy.yaml"].as_str(),
            Some(read(&root().join("deploy/kustomize/base/gateway-envoy.yaml")).as_str()),
            "{source}: ConfigMap/codexmesh-gateway-bootstrap"
        );
        let mounted = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "bootstrap"))
            .map(|v| v["configMap"]["name"].clone());
        assert_eq!(mounted.as_ref(), Some(&cm["metadata"]["name"]), "{source}");
        init_container_leaves_a_bootstrap_envoy_loads(&source, init, cm, dir.path());
    }

    // The Istio objects against the Istio schema (deploy/istio/istio-networking.schema.json).
    let istio = root().join("deploy/istio/codexmesh.yaml");
    let report = ok(
        &mut deploy_check(&[
            "validate-k8s",
            "deploy/istio/codexmesh.yaml",
            path_str(&istio),
        ]),
        "validating deploy/istio/codexmesh.yaml",
    );
    assert!(report.contains("EnvoyFilter/codexmesh"), "{report}");

    // The validators refuse a broken copy and name the file and the object.
    let base = read(&dir.path().join("deploy_kustomize_base.yaml"));
    let broken = dir.path().join("broken.yaml");
    write(
        &broken,
        &base.replacen("readinessProbe:", "readinessProbes:", 1),
    );
    let out = run(&mut deploy_check(&[
        "validate-k8s",
        "broken-base",
        path_str(&broken),
    ]));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a misspelled field passed");
    assert!(
        err.contains("broken-base: Deployment/codexmesh-") && err.contains("readinessProbes"),
        "{err}"
    );
    let istio_text = read(&istio);
    write(
        &broken,
        &istio_text.replacen("applyTo: CLUSTER", "applyTo: CLUSTERS", 1),
    );
    let out = run(&mut deploy_check(&[
        "validate-k8s",
        "broken-istio",
        path_str(&broken),
    ]));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an unknown applyTo passed");
    assert!(
        err.contains("broken-istio: EnvoyFilter/codexmesh") && err.contains("CLUSTERS"),
        "{err}"
    );
}

// ------------------------------------------------------------------ compose and Dockerfile

/// Runs docker-compose on `file` with the secrets it insists on set to placeholders.
fn compose(file: &Path, args: &[&str]) -> Output {
    run(Command::new("docker-compose")
        .arg("-f")
        .arg(file)
        .args(args)
        .current_dir(root())
        .env("CODEXMESH_PUSH_TOKEN", "placeholder-push-token")
        .env("CODEXMESH_MASTER_KEY", "placeholder-master-key")
        .env("CODEXMESH_PG_PASSWORD", "placeholder-password"))
}

#[test]
fn compose_file_validates_and_the_dockerfile_names_real_packages_and_commands() {
    if !tools_present(
        "compose_file_validates_and_the_dockerfile_names_real_packages_and_commands",
        &["python", "docker-compose"],
    ) {
        return;
    }
    let file = root().join("docker-compose.yml");
    let out = compose(&file, &["config", "-q"]);
    assert!(
        out.status.success(),
        "docker-compose.yml: docker-compose config -q: {}",
        text(&out.stderr)
    );
    // Without a secret the file refuses to start, naming it.
    let out = run(Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"])
        .current_dir(root())
        .env_remove("CODEXMESH_PUSH_TOKEN")
        .env("CODEXMESH_MASTER_KEY", "x")
        .env("CODEXMESH_PG_PASSWORD", "x"));
    assert!(
        !out.status.success() && text(&out.stderr).contains("CODEXMESH_PUSH_TOKEN"),
        "docker-compose.yml: a missing push token must be refused: {}",
        text(&out.stderr)
    );

    // What compose resolves: PostgreSQL, two replicas on it sharing one alias, two Envoys.
    let dir = codexmesh_test_kit::test_dir("codexmesh-deploy-compose-").unwrap();
    let resolved = dir.path().join("resolved.yaml");
    let out = compose(&file, &["config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    write(&resolved, &text(&out.stdout));
    let config = documents(&resolved).remove(0);
    let services = &config["services"];
    let src = "docker-compose.yml";
    assert!(
        services["postgres"]["healthcheck"].is_object(),
        "{src}: postgres healthcheck"
    );
    for cp in ["control-plane-1", "control-plane-2"] {
        let s = &services[cp];
        assert_eq!(s["command"][0], "serve", "{src}: {cp}");
        assert!(
            s["environment"]["CODEXMESH_STORE"]
                .as_str()
                .is_some_and(|u| u.starts_with("postgres://") && u.contains("@postgres:5432/")),
            "{src}: {cp} uses the postgres service: {}",
            s["environment"]
        );
        assert!(
            s["networks"]["default"]["aliases"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == "control-plane")),
            "{src}: {cp} answers to the shared alias control-plane"
        );
        assert!(s["healthcheck"].is_object(), "{src}: {cp} healthcheck");
        assert_eq!(
            s["depends_on"]["postgres"]["condition"], "service_healthy",
            "{src}: {cp} waits for postgres"
        );
    }
    for envoy in ["envoy-1", "envoy-2"] {
        let s = &services[envoy];
        assert!(s["healthcheck"].is_object(), "{src}: {envoy} healthcheck");
        assert_eq!(
            s["environment"]["CODEXMESH_PUSH_TOKEN"], "placeholder-push-token",
            "{src}: {envoy} gets the push token from the environment"
        );
    }
    let render = services["envoy-config"]["command"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        render.contains("--control-plane control-plane:18090"),
        "{src}: envoy-config renders for the shared alias: {render}"
    );

    // The validator refuses a broken copy (an unknown service key).
    let broken = root().join(format!(".deploy-test-broken-{}.yml", std::process::id()));
    write(
        &broken,
        &read(&file).replacen(
            "    image: postgres:16-bookworm\n",
            "    image: postgres:16-bookworm\n    imagez: nope\n",
            1,
        ),
    );
    let out = compose(&broken, &["config", "-q"]);
    let _ = std::fs::remove_file(&broken);
    assert!(
        !out.status.success() && text(&out.stderr).contains("imagez"),
        "docker-compose accepted an unknown key: {}",
        text(&out.stderr)
    );

    // The Dockerfile and the compose file name real packages, outputs and commands (no Docker
    // engine here: the image itself is not built by the tests).
    let dockerfile = read(&root().join("Dockerfile"));
    for (needle, why) in [
        ("cargo build --locked --release -p codexmesh ", "the codexmesh package"),
        (
            "cargo build --locked --release -p codexmesh-filter --target wasm32-wasip1",
            "the filter package",
        ),
        ("/src/target/release/codexmesh ", "the binary's output path"),
        (
            "/src/target/wasm32-wasip1/release/codexmesh_filter.wasm /opt/codexmesh/codexmesh_filter.wasm",
            "the module's output path, where the gateway's init container and compose copy it from",
        ),
        ("USER 65532:65532", "a non-root user"),
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile: {why}: `{needle}` missing");
    }
    for manifest in [
        "control-plane/codexmesh/Cargo.toml",
        "filter/wasm/Cargo.toml",
    ] {
        let m = read(&root().join(manifest));
        let name = if manifest.starts_with("filter") {
            "codexmesh-filter"
        } else {
            "codexmesh"
        };
        assert!(
            m.contains(&format!("name = \"{name}\"")),
            "Dockerfile builds -p {name}, which {manifest} does not name"
        );
    }
    assert!(
        read(&root().join("filter/wasm/Cargo.toml")).contains("cdylib"),
        "filter/wasm builds codexmesh_filter.wasm as a cdylib"
    );
    assert!(
        codexmesh_test_kit::bin::target_dir()
            .join("wasm32-wasip1/release/codexmesh_filter.wasm")
            .exists()
            || std::env::var_os("CODEXMESH_WASM").is_some(),
        "the module is named codexmesh_filter.wasm"
    );
    let rust_image: Vec<u32> = dockerfile
        .split("FROM rust:")
        .nth(1)
        .and_then(|s| s.split('-').next())
        .unwrap_or("")
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    let msrv: Vec<u32> = read(&root().join("Cargo.toml"))
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap_or("")
        .trim_matches('"')
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        !rust_image.is_empty() && rust_image >= msrv,
        "Dockerfile: rust:{rust_image:?} is older than the workspace's rust-version {msrv:?}"
    );
    // The commands and flags compose and the manifests run.
    let art = codexmesh_test_kit::Artifacts::locate().expect("scripts/build.sh");
    let help = ok(
        Command::new(&art.codexmesh).args(["envoy-bootstrap", "--help"]),
        "codexmesh envoy-bootstrap --help",
    );
    for flag in ["--out", "--node-id", "--control-plane"] {
        assert!(
            help.contains(flag),
            "codexmesh envoy-bootstrap has no {flag}: compose uses it"
        );
    }
    ok(
        Command::new(&art.codexmesh).args(["serve", "--help"]),
        "codexmesh serve --help",
    );
}

// ------------------------------------------------------------------------- Envoy configs

/// The files `scripts/render-deploy.sh` writes.
const RENDERED: &[&str] = &[
    "deploy/kustomize/base/gateway-envoy.yaml",
    "envoy/fragments/bootstrap.yaml",
    "envoy/fragments/clusters.yaml",
    "envoy/fragments/http_connection_manager.yaml",
    "envoy/fragments/routes.yaml",
    "deploy/istio/codexmesh.yaml",
];

/// An insta snapshot's content (after its front matter).
fn snapshot_body(text: &str) -> String {
    let mut parts = text.splitn(3, "---\n");
    let (_, _, body) = (parts.next(), parts.next(), parts.next());
    body.unwrap_or(text).to_owned()
}

#[test]
fn every_envoy_config_the_project_ships_loads_in_a_real_envoy() {
    if !tools_present(
        "every_envoy_config_the_project_ships_loads_in_a_real_envoy",
        &["python"],
    ) {
        return;
    }
    let art = codexmesh_test_kit::Artifacts::locate().expect("scripts/build.sh");
    let envoy = envoy_bin();
    let wasm = wasm();
    let wasm = path_str(&wasm);
    let dir = codexmesh_test_kit::test_dir("codexmesh-deploy-envoy-").unwrap();

    // The shipped renders are what the template renders now.
    let fresh = dir.path().join("fresh");
    ok(
        Command::new("bash")
            .arg(root().join("scripts/render-deploy.sh"))
            .arg(&fresh)
            .current_dir(root())
            .env("CODEXMESH_BIN", &art.codexmesh),
        "scripts/render-deploy.sh",
    );
    for file in RENDERED {
        assert_eq!(
            read(&fresh.join(file)),
            read(&root().join(file)),
            "{file} is not what envoy/bootstrap.template.yaml renders now: run scripts/render-deploy.sh"
        );
    }

    let mut configs: Vec<(String, PathBuf)> = Vec::new();
    // The bootstrap variants (the CLI's golden renders: IP, DNS+TLS, DNS plain upstreams, and
    // two egress proxies).
    let snaps = root().join("control-plane/codexmesh/src/snapshots");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .expect("snapshots")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("bootstrap_"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.to_string_lossy().contains("bootstrap_egress_proxies")),
        "{names:?}"
    );
    for snap in names {
        let body =
            snapshot_body(&read(&snap)).replace("/opt/codexmesh/codexmesh_filter.wasm", wasm);
        let out = dir
            .path()
            .join(snap.file_name().unwrap())
            .with_extension("yaml");
        write(&out, &body);
        configs.push((
            snap.strip_prefix(root()).unwrap().display().to_string(),
            out,
        ));
    }
    // The gateway's ConfigMap bootstrap, as the init container leaves it.
    let gateway = read(&root().join("deploy/kustomize/base/gateway-envoy.yaml"))
        .replace("__POD_NAME__", "codexmesh-gateway-0")
        .replace("/run/codexmesh/codexmesh_filter.wasm", wasm);
    let out = dir.path().join("gateway-envoy.yaml");
    write(&out, &gateway);
    configs.push(("deploy/kustomize/base/gateway-envoy.yaml".into(), out));
    // The fragments pasted into an existing config.
    let fragments = dir.path().join("fragments");
    std::fs::create_dir_all(&fragments).unwrap();
    for file in RENDERED
        .iter()
        .filter(|f| f.starts_with("envoy/fragments/"))
    {
        let body = read(&root().join(file)).replace("/etc/envoy/codexmesh_filter.wasm", wasm);
        write(&fragments.join(Path::new(file).file_name().unwrap()), &body);
    }
    let existing = dir.path().join("existing.yaml");
    write(
        &existing,
        &read(&root().join("tests/deploy/existing-envoy.yaml")).replace("LOCAL_APP_PORT", "9"),
    );
    let merged = dir.path().join("merged.yaml");
    ok(
        &mut deploy_check(&[
            "merge",
            path_str(&existing),
            path_str(&fragments),
            "main",
            "everything",
            path_str(&merged),
        ]),
        "merging envoy/fragments into tests/deploy/existing-envoy.yaml",
    );
    configs.push((
        "envoy/fragments/* in tests/deploy/existing-envoy.yaml".into(),
        merged.clone(),
    ));
    // The Istio patches applied to a stand-in ingress gateway config.
    let istio = dir.path().join("istio.yaml");
    ok(
        &mut deploy_check(&[
            "istio-assemble",
            path_str(&root().join("tests/deploy/istio-gateway-standin.yaml")),
            path_str(&root().join("deploy/istio/codexmesh.yaml")),
            path_str(&istio),
        ]),
        "assembling deploy/istio/codexmesh.yaml",
    );
    configs.push((
        "deploy/istio/codexmesh.yaml on tests/deploy/istio-gateway-standin.yaml".into(),
        istio,
    ));

    let mut failures = Vec::new();
    for (name, path) in &configs {
        let started = std::time::Instant::now();
        let (valid, log) = envoy_validates(&envoy, path);
        println!(
            "envoy --mode validate {name}: {valid} in {:?}",
            started.elapsed()
        );
        if !valid {
            failures.push(format!("{name} ({}):\n{log}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "Envoy refused:\n{}",
        failures.join("\n\n")
    );

    // Envoy refuses a broken copy (a misspelled HCM field), so a pass means something.
    let broken = dir.path().join("broken.yaml");
    write(
        &broken,
        &read(&merged).replacen("normalize_path:", "normalise_path:", 1),
    );
    let (valid, log) = envoy_validates(&envoy, &broken);
    assert!(
        !valid && log.contains("normalise_path"),
        "Envoy accepted a misspelled field: {log}"
    );
}

// ---------------------------------------------------------------- fragments, end to end

/// A tiny HTTP server: answers every request with 200 and `body` (the operator's own
/// application, or where the Istio gateway fetches the module from); returns its address.
async fn fixed_http_server(body: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    addr
}

async fn local_app() -> std::net::SocketAddr {
    fixed_http_server(b"from the local app".to_vec()).await
}

async fn listener_port(admin: std::net::SocketAddr, name: &str) -> u64 {
    let v: Value = reqwest::get(format!("http://{admin}/listeners?format=json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["listener_statuses"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
        .unwrap_or_else(|| panic!("no listener {name}: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_in_an_existing_envoy_serve_pooled_traffic_and_leave_its_routes_alone() {
    if !tools_present(
        "fragments_in_an_existing_envoy_serve_pooled_traffic_and_leave_its_routes_alone",
        &["python"],
    ) {
        return;
    }
    let stack = Stack::start(2).await.unwrap();
    let dir = stack.dir.path();
    // The fragments as an operator would cut them for this control plane and upstream.
    let grpc = stack.cp.grpc_addr.expect("serve is running");
    let source = Envoy::render_bootstrap(&stack.cp, grpc, None, dir, "fragments-source").unwrap();
    let fragments = dir.join("fragments");
    ok(
        &mut deploy_check(&["fragments", path_str(&source), path_str(&fragments)]),
        "cutting fragments",
    );
    let app = local_app().await;
    let existing = dir.join("existing.yaml");
    write(
        &existing,
        &read(&root().join("tests/deploy/existing-envoy.yaml"))
            .replace("LOCAL_APP_PORT", &app.port().to_string()),
    );
    let merged = dir.join("merged.yaml");
    ok(
        &mut deploy_check(&[
            "merge",
            path_str(&existing),
            path_str(&fragments),
            "main",
            "everything",
            path_str(&merged),
        ]),
        "merging",
    );
    let envoy = Envoy::run(&stack.art, &merged, &stack.cp.env.push_token, dir, "merged")
        .await
        .unwrap();
    stack
        .wait_until_serving_at(&envoy, &stack.key, Duration::from_secs(20))
        .await
        .unwrap();

    // Pooled traffic: turns served with the accounts' own credentials, the key kept back.
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..6 {
        let (status, body) = stack.turn_at(&envoy, &stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("response.completed"), "{body}");
    }
    let reqs = stack.sim.turn_requests().await.unwrap();
    assert_eq!(reqs.len(), 6, "{reqs:?}");
    let tokens: Vec<String> = (0..2)
        .map(|i| format!("Bearer {}", stack.access_token(i)))
        .collect();
    for r in &reqs {
        let auth = r["headers"]["authorization"].as_str().unwrap_or_default();
        assert!(tokens.iter().any(|t| t == auth), "upstream saw {auth}");
    }
    assert!(
        !serde_json::to_string(&reqs).unwrap().contains(&stack.key),
        "pool key leaked upstream"
    );
    // A wrong key is refused by the filter on codexmesh's routes.
    let resp = stack
        .http
        .post(envoy.url("/backend-api/codex/responses"))
        .bearer_auth("cmk_wrong")
        .json(&codexmesh_test_kit::turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The config's own routes answer as before, key or no key (the filter is off there).
    let http = &stack.http;
    for (path, want_status, want_body) in [
        ("/hello", 200, "hello from the existing config"),
        ("/app/anything", 200, "from the local app"),
        ("/elsewhere", 404, "not here"),
    ] {
        for key in [None, Some(stack.key.as_str())] {
            let mut req = http.get(envoy.url(path));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert_eq!(
                (status, body.as_str()),
                (want_status, want_body),
                "{path} key={}",
                key.is_some()
            );
        }
    }
    let other = listener_port(envoy.admin, "other").await;
    let body = reqwest::get(format!("http://127.0.0.1:{other}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "the other listener");
}

// ------------------------------------------------------------------- Istio, end to end

/// What a pooled turn through `envoy` answers for `host` (the gateway picks the virtual host
/// by it).
async fn turn_for_host(stack: &Stack, envoy: &Envoy, host: &str, key: &str) -> (u16, String) {
    let resp = stack
        .http
        .post(envoy.url("/backend-api/codex/responses"))
        .header("host", host)
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .json(&codexmesh_test_kit::turn_body("ping"))
        .send()
        .await;
    // A listener still warming (the module is being fetched) refuses connections: status 0.
    match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_patches_fetch_the_module_by_sha256_and_serve_pooled_traffic_on_their_host() {
    if !tools_present(
        "istio_patches_fetch_the_module_by_sha256_and_serve_pooled_traffic_on_their_host",
        &["python"],
    ) {
        return;
    }
    let stack = Stack::start(2).await.unwrap();
    let dir = stack.dir.path();
    let grpc = stack.cp.grpc_addr.expect("serve is running");
    let source = Envoy::render_bootstrap(&stack.cp, grpc, None, dir, "istio-source").unwrap();
    let fragments = dir.join("fragments");
    ok(
        &mut deploy_check(&["fragments", path_str(&source), path_str(&fragments)]),
        "cutting fragments",
    );
    // The module served over HTTP, as the EnvoyFilter expects it, and its digest.
    let module = std::fs::read(wasm()).unwrap();
    let wasm_server = fixed_http_server(module).await;
    let sha = ok(Command::new("sha256sum").arg(wasm()), "sha256sum");
    let sha = sha.split_whitespace().next().unwrap().to_owned();
    let url = format!("http://{wasm_server}/codexmesh_filter.wasm");
    let filters = dir.join("istio.yaml");
    ok(
        &mut deploy_check(&[
            "istio-render",
            path_str(&fragments),
            path_str(&filters),
            &url,
            &sha,
        ]),
        "istio-render",
    );
    // The stand-in gateway on loopback ports the OS picks.
    let standin = dir.join("standin.yaml");
    write(
        &standin,
        &read(&root().join("tests/deploy/istio-gateway-standin.yaml"))
            .replace("port_value: 15000", "port_value: 0")
            .replace(
                "address: 0.0.0.0, port_value: 8080",
                "address: 127.0.0.1, port_value: 0",
            ),
    );
    let assembled = dir.join("istio-gateway.yaml");
    ok(
        &mut deploy_check(&[
            "istio-assemble",
            path_str(&standin),
            path_str(&filters),
            path_str(&assembled),
        ]),
        "istio-assemble",
    );
    let envoy = Envoy::run(
        &stack.art,
        &assembled,
        &stack.cp.env.push_token,
        dir,
        "istio",
    )
    .await
    .unwrap();
    let host = "codexmesh.example.com";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = (0, String::new());
    while std::time::Instant::now() < deadline {
        last = turn_for_host(&stack, &envoy, host, &stack.key).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last.0,
        200,
        "deploy/istio/codexmesh.yaml: no pooled turn on {host}: {}\n{}",
        last.1,
        codexmesh_test_kit::tail(&envoy.proc.log_text())
    );
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..4 {
        let (status, body) = turn_for_host(&stack, &envoy, host, &stack.key).await;
        assert_eq!(status, 200, "{body}");
    }
    let reqs = stack.sim.turn_requests().await.unwrap();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    let tokens: Vec<String> = (0..2)
        .map(|i| format!("Bearer {}", stack.access_token(i)))
        .collect();
    for r in &reqs {
        let auth = r["headers"]["authorization"].as_str().unwrap_or_default();
        assert!(tokens.iter().any(|t| t == auth), "upstream saw {auth}");
    }
    // Another application's host on the same gateway port never meets the filter: its request
    // (pool key and all) goes to its own cluster (unresolvable here: Envoy's 503), not a
    // codexmesh answer.
    let (status, body) = turn_for_host(&stack, &envoy, "shop.example.com", &stack.key).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        !body.contains("\"error\""),
        "the codexmesh filter answered for another host: {body}"
    );

    // A module whose digest differs is refused: the same patches with a wrong sha256 never
    // serve a pooled turn.
    let wrong = dir.join("istio-wrong.yaml");
    write(&wrong, &read(&filters).replace(&sha, &"ab".repeat(32)));
    let assembled_wrong = dir.join("istio-gateway-wrong.yaml");
    ok(
        &mut deploy_check(&[
            "istio-assemble",
            path_str(&standin),
            path_str(&wrong),
            path_str(&assembled_wrong),
        ]),
        "istio-assemble (wrong sha256)",
    );
    match Envoy::run(
        &stack.art,
        &assembled_wrong,
        &stack.cp.env.push_token,
        dir,
        "istio-wrong",
    )
    .await
    {
        Err(e) => println!("with a wrong sha256 Envoy did not come up: {e}"),
        Ok(bad) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (status, body) = turn_for_host(&stack, &bad, host, &stack.key).await;
            assert_ne!(status, 200, "a module with the wrong sha256 served: {body}");
            println!("with a wrong sha256: {status} {body}");
        }
    }
}
