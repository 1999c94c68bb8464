#!/usr/bin/env python3
"""Rate limits (issue #11, item 2): how close rangefetch, curl and aria2c keep to a --limit-rate.

    python bench/ratelimit.py [--rates 1M,8M] [--seconds 60] [--repeat 1]

The server is tests/rangeserver.py (a threaded HTTP/1.1 range server, run in
this process on 127.0.0.1) serving one random file of ``rate x seconds``
bytes.  Rows, each limited to RATE:

* ``rangefetch`` embedded: ``get URL -c 16 --limit-rate RATE``;
* ``rangefetch, 2 workers``: a private redis-server and two ``rangefetch
  worker -c 8``, started once; ``get --redis -c 16 --limit-rate RATE``;
* ``curl --limit-rate RATE`` (one connection);
* ``aria2c -x16 -s16 -k1M --max-download-limit=RATE``.

Every 0.1 s a sampler takes two counts, both on the server's side of the
sockets:

* **served**: the body bytes the server has handed to its sockets
  (``RequestRecord.sent``);
* **read**: of those, the bytes the tool has read from its sockets: served
  less what the kernel still holds in the connections' queues (the
  server's unsent ``tx_queue`` and the tool's unread ``rx_queue`` in
  /proc/net/tcp, for every connection to the server's port), within a
  16 KiB piece a connection (``PIECE``).

A 10-s window's rate is the bytes counted in it over 10 s; the windows start
every second, from the first byte to 10 s before the last.  *read* is what
the target is about (within 10 % of the rate over 10 s or more): what a
tool takes off the network.  *served* runs ahead of it by what the kernel's
socket buffers hold: on loopback they grow to several MiB a connection
(``tcp_rmem`` allows 32 MiB here), the server's writes land in them at
once, and a new request has its buffers filled in a moment, so *served*
comes in bursts; the table gives its first window.
"whole run" is the file's size over the time from the tool's start to its
exit (its start-up included), as a user sees it.  Every file is checked by
sha256.  Results: Markdown on stdout, WORKDIR/results-ratelimit.json and
.md.  Stdlib only, Linux only; see bench/README.md, "Rate limits (issue #11)".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))
import rangeserver  # noqa: E402  (tests/rangeserver.py)
import run as bench_run  # noqa: E402  (bench/run.py: machine facts)
from rangeserver import RangeServer  # noqa: E402

MIB = 1 << 20
NAME = "source.bin"
WINDOW = 10.0  # seconds: the "over 10 s or more"
SAMPLE = 0.1
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
# The server writes bodies in pieces of this many bytes (the test server's own: 64 KiB).  A
# write blocked on a full socket has part of its piece in the kernel's queue and none of it
# in RequestRecord.sent yet, so *read* is short by up to a piece a connection: 16 KiB pieces
# keep that within 256 KiB for 16 connections.
PIECE = 16 * 1024


def parse_rate(text: str) -> int:
    """``1M``, ``512K`` or plain bytes/s (binary units, as curl and aria2c read them)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    suffix = text[-1] if text[-1:] in units else ""
    return int(float(text[: len(text) - len(suffix)]) * units[suffix])


@dataclass(frozen=True)
class Tool:
    name: str
    template: str  # {rf} {url} {out} {dir} {name} {rate}

    def argv(self, rf: list[str], url: str, out: Path, rate: int) -> list[str]:
        text = self.template.format(rf=shlex.join(rf), url=shlex.quote(url), out=shlex.quote(str(out)),
                                    dir=shlex.quote(str(out.parent)), name=shlex.quote(out.name), rate=rate)
        return shlex.split(text)


TOOLS = (
    Tool("rangefetch (embedded, 16 conns)", "{rf} get {url} -o {out} -c 16 -q --limit-rate {rate}"),
    Tool("curl --limit-rate", "curl -q -sS --limit-rate {rate} -o {out} {url}"),
    Tool("aria2c -x16 -s16 -k1M --max-download-limit", "aria2c -x16 -s16 -k1M --max-download-limit={rate} "
         "-q --allow-overwrite=true --auto-file-renaming=false --file-allocation=none -d {dir} -o {name} {url}"),
)


def queued(port: int) -> int:
    """Bytes the kernel holds on connections to 127.0.0.1:``port``: the server's unsent, the clients' unread."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, (tx, rx) = fields[1], fields[2], fields[4].split(":")
        if local.endswith(f":{port:04X}"):
            held += int(tx, 16)  # the server's socket: written, not yet in the client's queue
        elif remote.endswith(f":{port:04X}"):
            held += int(rx, 16)  # the client's socket: arrived, not yet read
    return held


@dataclass
class Run:
    tool: str
    rate: int
    seconds: float = 0.0
    exit_code: int | None = None
    sha256_ok: bool = False
    error: str | None = None
    requests: int = 0
    served: int = 0  # body bytes the server sent (a byte sent twice counts twice)
    read: list[float] = field(default_factory=list)  # the tool's 10-s windows, as shares of the rate
    served_first: float | None = None  # the server's first 10-s window, as a share of the rate
    whole: float | None = None  # size / seconds, as a share of the rate
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (s from the start, read, served), 1 s apart


class Sampler(threading.Thread):
    """Every SAMPLE seconds: the bytes the server served for ``key``, and how many of them the tool has read."""

    def __init__(self, server: RangeServer, key: str) -> None:
        super().__init__(daemon=True)
        self.server, self.key = server, key
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = sum(r.sent for r in self.server.requests if f"key={self.key}" in r.path)
            read = max(0, sent - queued(self.server.port))
            self.samples.append((time.monotonic(), read, sent))
            self.stop.wait(SAMPLE)


def windows(points: list[tuple[float, int]]) -> list[float]:
    """Bytes/s in 10-s windows starting every second, from the first byte to 10 s before the last."""
    started = next((t for t, b in points if b > 0), None)
    if started is None:
        return []
    # The end: the first sample at the final count (which may stop a few bytes
    # short of the size: the last reads come as the sampler is stopped).
    final = max(b for _, b in points)
    ended = next(t for t, b in points if b >= final)

    def at(t: float) -> int:  # bytes by time t (the last sample at or before it)
        best = 0
        for ts, b in points:
            if ts > t:
                break
            best = b
        return best

    rates = []
    t = started
    while t + WINDOW <= ended:
        rates.append((at(t + WINDOW) - at(t)) / WINDOW)
        t += 1.0
    return rates


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir
        default_rf = [str(Path(sys.executable).with_name("rangefetch"))]
        self.rf = shlex.split(args.rangefetch) if args.rangefetch else default_rf
        self.env = {k: v for k, v in os.environ.items()
                    if k.lower() not in PROXY_VARS and not k.upper().startswith("RANGEFETCH_")}
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
        self.server = RangeServer()
        self.groups: list[int] = []  # process groups to kill on the way out

    def spawn(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=env, start_new_session=True)
        self.groups.append(proc.pid)
        return proc

    def cluster(self) -> Tool | None:
        """A private redis-server and two workers for the distributed row; ``None`` without redis-server."""
        binary = shutil.which("redis-server")
        if binary is None:
            print("no redis-server: no distributed row", file=sys.stderr)
            return None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        logs = self.workdir / "logs"
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(self.workdir / "redis")], logs / "redis.log", self.env, self.workdir)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 10 s")
            time.sleep(0.05)
        redis_url = f"redis://127.0.0.1:{port}/0"
        downloads = self.workdir / "dl"
        env = {**self.env, "RANGEFETCH_REDIS_URL": redis_url, "RANGEFETCH_DOWNLOAD_DIR": str(downloads)}
        worker_logs = [logs / f"worker-{i}.log" for i in range(2)]
        for log in worker_logs:
            self.spawn([*self.rf, "worker", "-c", "8"], log, env, self.workdir)
        deadline = time.monotonic() + 60
        while not all("jobs at once" in log.read_text(errors="replace") for log in worker_logs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start within 60 s (see {logs})")
            time.sleep(0.1)
        where = shlex.quote(str(downloads))
        return Tool("rangefetch, 2 workers (16 conns)",
                    f"env RANGEFETCH_REDIS_URL={redis_url} RANGEFETCH_DOWNLOAD_DIR={where}"
                    " {rf} get {url} -o {out} -c 16 -q --limit-rate {rate}")

    def run(self, tool: Tool, rate: int, size: int, sha: str) -> Run:
        key = secrets.token_hex(6)
        run = Run(tool.name, rate)
        exe = tool.argv(self.rf, "", Path("x"), rate)[0]
        if shutil.which(exe) is None and not Path(exe).exists():
            run.error = f"{exe} not found"
            return run
        rundir = self.workdir / "dl" / key
        rundir.mkdir(parents=True)
        out = rundir / "out.bin"
        argv = tool.argv(self.rf, self.server.url(NAME, key=key), out, rate)
        log = self.workdir / "logs" / f"{key}.log"
        log.write_text(f"$ {shlex.join(argv)}\n")
        sampler = Sampler(self.server, key)
        sampler.start()
        t0 = time.monotonic()
        proc = self.spawn(argv, log, self.env, rundir)
        try:
            run.exit_code = proc.wait(timeout=self.args.seconds * 4 + 60)
        except subprocess.TimeoutExpired:
            run.error = "killed: took over 4x the time the rate asks for"
        run.seconds = time.monotonic() - t0
        kill_group(proc.pid)
        proc.wait()
        sampler.stop.set()
        sampler.join()
        if run.exit_code == 0 and out.exists():
            with out.open("rb") as fh:
                run.sha256_ok = hashlib.file_digest(fh, "sha256").hexdigest() == sha
            if not run.sha256_ok:
                run.error = "sha256 mismatch"
        elif run.error is None:
            run.error = f"exit {run.exit_code}: " + log.read_text(errors="replace").strip().splitlines()[-1][:120]
        gets = [r for r in self.server.requests if f"key={key}" in r.path and r.method == "GET"]
        run.requests, run.served = len(gets), sum(r.sent for r in gets)
        samples = sampler.samples
        run.series = [(round(t - t0, 1), r, s) for t, r, s in samples[:: int(1 / SAMPLE)]]
        run.read = [r / rate for r in windows([(t, r) for t, r, _ in samples])]
        served = windows([(t, s) for t, _, s in samples])
        run.served_first = served[0] / rate if served else None
        run.whole = size / run.seconds / rate
        shutil.rmtree(rundir, ignore_errors=True)
        return run


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def spread(values: list[float]) -> str:
    return "—" if not values else f"{pct(statistics.median(values))} ({pct(min(values))}-{pct(max(values))})"


def table(runs: list[Run], rate: int, size: int, seconds: float) -> str:
    head = ["tool", "read, 10-s windows: median (lowest-highest)", "served, first 10 s", "whole run",
            "GETs", "served / file"]
    lines = [f"**{rate / MIB:g} MiB/s**, a file of {size / MIB:.0f} MiB ({seconds:g} s at the rate):", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    by_tool: dict[str, list[Run]] = {}
    for r in runs:
        by_tool.setdefault(r.tool, []).append(r)
    for name, rs in by_tool.items():
        bad = next((r.error for r in rs if r.error), None)
        if bad:
            lines.append(f"| {name} | FAILED: {bad} |" + " |" * (len(head) - 2))
            continue
        firsts = [r.served_first for r in rs if r.served_first is not None]
        lines.append(
            f"| {name} | {spread([w for r in rs for w in r.read])} | "
            f"{pct(statistics.median(firsts) if firsts else None)} | "
            f"{pct(statistics.median(r.whole or 0 for r in rs))} | "
            f"{statistics.median(r.requests for r in rs):g} | {statistics.median(r.served for r in rs) / size:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1M,8M", help="comma list of rates (bytes/s, K/M suffixes)")
    ap.add_argument("--seconds", type=float, default=60.0, help="the file is rate x this many bytes")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-distributed", action="store_true", help="skip the 2-worker row")
    ap.add_argument("--rangefetch", default="", help="command prefix for rangefetch (default: <venv>/bin/rangefetch)")
    ap.add_argument("--workdir", type=Path, default=BENCH / "out" / "ratelimit")
    args = ap.parse_args()
    args.workdir = args.workdir.resolve()
    shutil.rmtree(args.workdir / "dl", ignore_errors=True)
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)
    (args.workdir / "dl").mkdir(parents=True, exist_ok=True)
    rangeserver.CHUNK = PIECE
    b = Bench(args)
    b.server.start()
    machine = bench_run.machine_facts([])
    machine.pop("nginx", None)  # not used here: the server is tests/rangeserver.py in this process
    machine["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results: dict[str, Any] = {"machine": machine, "window_s": WINDOW, "rates": {}}
    md = []
    try:
        tools = list(TOOLS)
        if not args.no_distributed and (dist := b.cluster()) is not None:
            tools.insert(1, dist)
        for rate in (parse_rate(r) for r in args.rates.split(",")):
            size = int(rate * args.seconds)
            data = os.urandom(size)
            sha = hashlib.sha256(data).hexdigest()
            b.server.add_file(NAME, data)
            runs = []
            for i in range(args.repeat):
                for tool in tools:  # interleaved, one at a time
                    r = b.run(tool, rate, size, sha)
                    runs.append(r)
                    print(f"[{rate / MIB:g} MiB/s] {tool.name} #{i + 1}: {r.error or f'{r.seconds:.1f} s'}; "
                          f"read {spread(r.read)}, served first 10 s {pct(r.served_first)}", file=sys.stderr)
            results["rates"][str(rate)] = [asdict(r) for r in runs]
            md.append(table(runs, rate, size, args.seconds))
            b.server.reset()
    finally:
        for pgid in b.groups:
            kill_group(pgid)
        b.server.stop()
    text = "\n\n".join(md)
    print(text)
    (args.workdir / "results-ratelimit.md").write_text(text + "\n")
    (args.workdir / "results-ratelimit.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
