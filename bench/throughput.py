r"""HTTP throughput, protected vs unprotected, on the same server in the same run.

For each framework two servers run side by side (loopback only): the same endpoint without and
with bearerguard (bench/apps.py), each with ``--workers`` processes (``uvicorn --workers N``,
``gunicorn -w N``). wrk loads them alternately for a few seconds per round, with one valid token
reused (the machine-to-machine norm) and, with ``--tokens N``, also N distinct clients' tokens
(different ``sub``/``client_id``) cycled by a wrk Lua script: a worker verifies a token the
first time it sees it, then serves it from its token cache (4096 by default, more than N here).
With tokens, a warm-up of ``--warm-sweeps`` passes over them comes first (at most 20 s), so the
rounds measure the steady state. Reported: median requests/s, median latency, and the ratio
protected / unprotected with the range of the per-round ratios.

``fastapi+nodelay`` (or ``starlette+nodelay``) in ``--apps`` runs uvicorn with the one-line fix
of uvicorn issue #3149 applied by a launcher: with ``--workers`` > 1 uvicorn binds the listener
with ``proto`` 0, so asyncio never sets TCP_NODELAY on accepted sockets and each keep-alive
response waits ~40 ms for a delayed ACK; the fix binds it as IPPROTO_TCP, as one worker does.

The issuer is a LocalIssuer's documents served here, so that each discovery or JWKS request is
attributed to the process that made it (client port -> socket inode in /proc/net/tcp -> the
PID whose /proc/<pid>/fd holds it); the requests per worker PID are printed with each worker's
CPU time. Linux only.

    .venv/bin/python bench/throughput.py [--rounds 5] [--seconds 3] [--apps starlette,fastapi,flask]
    .venv/bin/python bench/throughput.py --workers 2 --tokens 1000 \
        --apps fastapi,fastapi+nodelay,flask
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bearerguard.testing import LocalIssuer

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
AUDIENCE = "https://shopping.api"
TICK = os.sysconf("SC_CLK_TCK")
WARM_UP_CAP = 20.0  # seconds of warm-up with the distinct tokens, at most, per server

# wrk cycles through the tokens of the file given after "--", one per request, across all
# connections of its thread.
CYCLE_LUA = """
local tokens, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""

# `python -m uvicorn`, with the listener bound as IPPROTO_TCP (uvicorn PRs #3154/#3155 for
# issue #3149): the workers unpickle it with that proto, and asyncio then sets TCP_NODELAY.
NODELAY_UVICORN = """
import socket
import uvicorn.config
from uvicorn.main import main

bind = uvicorn.config.Config.bind_socket


def bind_tcp(self):
    sock = bind(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


uvicorn.config.Config.bind_socket = bind_tcp
main()
"""


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, state, first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Every live process of a process group (our servers each start a session of their own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) and fields[2] == str(pgid):
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK if fields else 0.0


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def owner_of(client_port: int, server_port: int, pgids: list[int]) -> int | None:
    """The PID, among our servers' process groups, holding the loopback socket client_port.

    Called while the connection is open (the issuer has not answered yet), so the socket exists.
    """
    local, remote = f"0100007F:{client_port:04X}", f"0100007F:{server_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pgid in pgids:
        for pid in group_members(pgid):
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == target:
                            return pid
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to whatever is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(proc.pid):  # a worker that outlived its master
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# -- the issuer ---------------------------------------------------------------------------------


@dataclass
class Issuer:
    """A LocalIssuer's discovery document and JWKS on 127.0.0.1, each request's PID recorded."""

    local: LocalIssuer
    port: int
    pgids: list[int] = field(default_factory=list)  # the server process groups to look in
    fetches: list[tuple[str, int | None]] = field(default_factory=list)  # (path, pid)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, client_port: int) -> tuple[int, dict[str, Any]]:
        pid = owner_of(client_port, self.port, list(self.pgids))
        with self.lock:
            self.fetches.append((path, pid))
        if path in (
            "/oidc/.well-known/openid-configuration",
            "/oidc/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/oidc",
        ):
            return 200, self.local.metadata()
        if path == "/oidc/jwks":
            return 200, self.local.jwks()
        return 404, {"error": "not found"}

    def by_pid(self) -> dict[int | None, Counter[str]]:
        """Requests per PID (None: not attributed to any of our servers' processes)."""
        counts: dict[int | None, Counter[str]] = {}
        with self.lock:
            for path, pid in self.fetches:
                kind = "jwks" if path.endswith("/jwks") else "discovery"
                counts.setdefault(pid, Counter())[kind] += 1
        return counts


@contextlib.contextmanager
def issuer() -> Iterator[Issuer]:
    """Serve the issuer on a free loopback port; yields it with its ``local.issuer`` set."""
    state: list[Issuer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state[0].answer(self.path, self.client_address[1])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    port = int(http.server_address[1])
    state.append(Issuer(LocalIssuer(f"http://127.0.0.1:{port}/oidc", audience=AUDIENCE), port))
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)


# -- the servers under test ---------------------------------------------------------------------


@dataclass
class Server:
    """One app server: its master process, URL, log file and worker PIDs at start."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    workers: list[int] = field(default_factory=list)

    def current_workers(self) -> list[int]:
        """Worker PIDs now: the group minus the master and multiprocessing's resource tracker.

        A single uvicorn worker is the master itself.
        """
        members = group_members(self.proc.pid)
        found = [p for p in members if p != self.proc.pid and "resource_tracker" not in cmdline(p)]
        return found or [p for p in members if p == self.proc.pid]


@contextlib.contextmanager
def serve(app: str, protect: bool, iss: Issuer, workers: int, logs: Path) -> Iterator[Server]:
    """Start one app server (uvicorn, or gunicorn for flask) and wait until its workers answer."""
    kind, _, variant = app.partition("+")
    port = free_port()
    env = {**os.environ, "BENCH_APP": kind, "BENCH_PROTECT": "1" if protect else "0"}
    env.update(AUTH_ISSUER=iss.local.issuer, AUTH_AUDIENCE=AUDIENCE)
    if kind == "flask":
        cmd = [PYTHON, "-m", "gunicorn", "--chdir", str(ROOT / "bench"), "-w", str(workers)]
        cmd += ["-b", f"127.0.0.1:{port}", "apps:app"]
    else:
        launch = ["-c", NODELAY_UVICORN] if variant == "nodelay" else ["-m", "uvicorn"]
        cmd = [PYTHON, *launch, "--app-dir", str(ROOT / "bench"), "apps:app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        cmd += ["--no-access-log"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
    log = logs / f"{app}-{'protected' if protect else 'open'}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    iss.pgids.append(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(server.url + "/products", timeout=1)
                server.workers = server.current_workers()
                if len(server.workers) == workers:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{app} server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        time.sleep(0.5 if workers > 1 else 0)  # the other workers finish importing the app
        yield server
    finally:
        stop(proc)


# -- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What wrk sends: one reused token, or a Lua script cycling through a file of tokens."""

    name: str
    token: str | None = None
    script: Path | None = None
    tokens_file: Path | None = None


@dataclass(frozen=True)
class Sample:
    """One wrk run: requests/s, requests sent, median latency in ms."""

    rate: float
    sent: int
    p50_ms: float


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def load(url: str, what: Load, seconds: int, connections: int) -> Sample:
    """One wrk run; any non-2xx answer or socket error ends the benchmark."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if what.token is not None:
        cmd += ["-H", f"Authorization: Bearer {what.token}", url + "/products"]
    else:
        cmd += ["-s", str(what.script), url + "/products", "--", str(what.tokens_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"unexpected errors under load at {url} ({what.name}):\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    sent = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s|m)\b", out)
    if not rate or not sent or not p50:
        raise SystemExit(f"cannot read wrk output:\n{out}")
    p50_ms = float(p50.group(1)) * UNIT_MS[p50.group(2)]
    return Sample(float(rate.group(1)), int(sent.group(1)), p50_ms)


def warm_up(server: Server, loads: list[Load], n_tokens: int, sweeps: int, c: int) -> Sample:
    """Imports, keys fetched, caches filled; returns the first second with the distinct tokens.

    The reused token for 1 s; then the distinct tokens in 1 s runs until ``sweeps`` passes over
    them were sent or WARM_UP_CAP elapsed. The returned sample's ``sent`` is the warm-up's total.
    """
    first: Sample | None = None
    for what in loads:
        if what.token is not None:
            load(server.url, what, 1, c)
            continue
        sent, started = 0, time.monotonic()
        while sent < sweeps * n_tokens and time.monotonic() - started < WARM_UP_CAP:
            sample = load(server.url, what, 1, c)
            first, sent = first or sample, sent + sample.sent
        if first:
            first = Sample(first.rate, sent, first.p50_ms)
    return first or Sample(0.0, 0, 0.0)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process of a server: its discovery and JWKS requests, its CPU time."""

    pid: int
    fetched: Counter[str]
    cpu: float


@dataclass
class Result:
    """One app's figures: samples per (load, protected), the warm-up, the workers, notes."""

    app: str
    samples: dict[tuple[str, bool], list[Sample]]
    cold: dict[bool, Sample]
    workers: dict[bool, list[Worker]]
    notes: list[str]

    def median(self, name: str, protect: bool) -> float:
        return statistics.median(s.rate for s in self.samples[(name, protect)])

    def latency(self, name: str, protect: bool) -> float:
        return statistics.median(s.p50_ms for s in self.samples[(name, protect)])

    def ratio(self, name: str) -> str:
        """Median protected / median unprotected, and the range of the per-round ratios."""
        plain, guarded = self.samples[(name, False)], self.samples[(name, True)]
        per_round = [g.rate / p.rate for p, g in zip(plain, guarded, strict=True)]
        median = self.median(name, True) / self.median(name, False)
        return f"{median:.3f} ({min(per_round):.3f}-{max(per_round):.3f})"


def bench_app(
    app: str, iss: Issuer, loads: list[Load], n_tokens: int, logs: Path, args: argparse.Namespace
) -> Result:
    """Both servers of one app side by side, warmed up, then the alternating rounds."""
    samples: dict[tuple[str, bool], list[Sample]] = {
        (w.name, p): [] for w in loads for p in (False, True)
    }
    notes: list[str] = []
    with (
        serve(app, False, iss, args.workers, logs) as plain,
        serve(app, True, iss, args.workers, logs) as guarded,
    ):
        servers = {False: plain, True: guarded}
        cold = {
            p: warm_up(servers[p], loads, n_tokens, args.warm_sweeps, args.connections)
            for p in (False, True)
        }
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for what in loads:
                for protect in order:
                    sample = load(servers[protect].url, what, args.seconds, args.connections)
                    samples[(what.name, protect)].append(sample)
        fetched = iss.by_pid()
        workers: dict[bool, list[Worker]] = {}
        for protect, server in servers.items():
            label = f"{app} {'protected' if protect else 'unprotected'}"
            now = server.current_workers()
            if sorted(now) != sorted(server.workers):
                notes.append(f"{label}: the workers changed, {server.workers} -> {now}")
            others = [
                p for p in fetched if p not in server.workers and p in (*now, server.proc.pid)
            ]
            notes += [f"{label}: PID {p} (not a worker) made {dict(fetched[p])}" for p in others]
            workers[protect] = [
                Worker(pid, fetched.get(pid, Counter()), cpu_seconds(pid)) for pid in server.workers
            ]
    return Result(app, samples, cold, workers, notes)


def report(results: list[Result], loads: list[Load], iss: Issuer, args: argparse.Namespace) -> None:
    """The tables: throughput per load, the warm-up, then each worker's fetches and CPU time."""
    names = {"reused": "token reused", "distinct": f"{args.tokens:,} clients' tokens"}
    per = f"{args.workers} workers" if args.workers > 1 else "one worker"
    print(
        f"\nHTTP throughput, {per} per server, median of {args.rounds} alternating "
        f"{args.seconds} s rounds, wrk -t1 -c{args.connections}; ratio = protected / "
        "unprotected (range of the per-round ratios); p50 = median latency, ms"
    )
    print("| app | load | unprotected req/s | protected req/s | p50 | ratio |")
    print("|---|---|---|---|---|---|")
    for res in results:
        kind, _, variant = res.app.partition("+")
        server = "gunicorn" if kind == "flask" else "uvicorn" + (f", {variant}" if variant else "")
        for what in loads:
            plain, guarded = res.median(what.name, False), res.median(what.name, True)
            p50 = f"{res.latency(what.name, False):.1f} / {res.latency(what.name, True):.1f}"
            cells = [f"{kind} ({server})", names[what.name], f"{plain:.0f}", f"{guarded:.0f}"]
            print("| " + " | ".join([*cells, p50, res.ratio(what.name)]) + " |")
    if args.tokens:
        print(
            f"\nWarm-up with the {args.tokens:,} tokens (requests sent; its first second, one "
            "sample each, includes the verifications)"
        )
        for res in results:
            cold_plain, cold_guarded = res.cold[False], res.cold[True]
            line = f"  {res.app}: sent {cold_plain.sent:,} / {cold_guarded.sent:,}; first second "
            print(f"{line}{cold_plain.rate:.0f} -> {cold_guarded.rate:.0f} req/s")
    print("\nDiscovery and JWKS requests per worker process, and its CPU time over the run")
    print("| app | server | worker PID | discovery | JWKS | CPU s |")
    print("|---|---|---|---|---|---|")
    for res in results:
        for protect in (False, True):
            label = "protected" if protect else "unprotected"
            for w in res.workers[protect]:
                cells = [res.app, label, str(w.pid), str(w.fetched["discovery"])]
                cells += [str(w.fetched["jwks"]), f"{w.cpu:.1f}"]
                print("| " + " | ".join(cells) + " |")
    unknown = iss.by_pid().get(None)
    if unknown:
        print(f"NOTE: requests to the issuer not attributed to any server process: {dict(unknown)}")
    for res in results:
        stalled = [w.name for w in loads if res.latency(w.name, False) >= 35]
        if stalled:
            print(
                f"NOTE: {res.app}: median latency >= 35 ms unprotected ({', '.join(stalled)}): "
                "bound by a delayed-ACK stall, not by CPU (uvicorn issue #3149 with --workers)"
            )
        for note in res.notes:
            print(f"NOTE: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--apps", default="starlette,fastapi,flask", help="also fastapi+nodelay, starlette+nodelay"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes per server")
    parser.add_argument(
        "--tokens", type=int, default=0, help="also load with this many distinct clients' tokens"
    )
    parser.add_argument("--warm-sweeps", type=int, default=10, help="passes over the tokens first")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server and wrk started here is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (make bench does this)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, issuer() as iss:
        work = Path(tmp)
        loads = [Load("reused", token=iss.local.mint("read:products"))]
        if args.tokens:
            clients = [f"client-{i:04d}" for i in range(args.tokens)]
            tokens = [iss.local.mint("read:products", client_id=c, sub=c) for c in clients]
            (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
            (work / "cycle.lua").write_text(CYCLE_LUA)
            loads.append(
                Load("distinct", script=work / "cycle.lua", tokens_file=work / "tokens.txt")
            )
        results = []
        for app in args.apps.split(","):
            res = bench_app(app, iss, loads, args.tokens, work, args)
            for what in loads:
                plain, guarded = res.median(what.name, False), res.median(what.name, True)
                line = f"{app}, {what.name}: {plain:.0f} -> {guarded:.0f} req/s"
                print(f"{line} ({res.ratio(what.name)})", flush=True)
            results.append(res)
        report(results, loads, iss, args)
    print(f"\n({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
