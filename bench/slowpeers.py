#!/usr/bin/env python3
"""Slow peers (issue #9, items 5 and 6): rangefetch, aria2c, axel and curl against stragglers and trickles.

    python bench/slowpeers.py [--repeat 3] [--scenarios straggler,straggler-long,trickle-one,trickle-all]

The server is tests/rangeserver.py (a threaded HTTP/1.1 range server, run in
this process on 127.0.0.1) serving one random file; its fault modes, chosen
per URL through the query string, make the slow peers:

* ``straggler``: 8 connections, first the plain URL (baseline), then
  ``straggle=100000``: the first connection that asks for a range is served
  at 100 kB/s for every request it makes. Seconds for each, and the ratio.
* ``straggler-long``: the same with every connection capped (``rate=``, so
  the baseline takes ~30 s) and the straggler 10x slower than the cap.
* ``trickle-one``: the first range GET after one (``skip=1``: rangefetch's
  probe GET; aria2c and axel have none, so it is their second GET) trickles
  one byte every 20 s (``slow_rate=0.05``): seconds to a correct file.
* ``trickle-all``: every body trickles (``rate=0.05``): seconds until the
  tool gives up, with defaults and with the low-speed knobs.

``--distributed`` adds a ``rangefetch get --redis`` row to the two straggler
scenarios: a private redis-server and two ``rangefetch worker -c 4``, started
once before the scenarios (``distributed_rows``).

Every URL carries a fresh ``key=`` so the server's per-key fault counters
start over, every run gets a fresh directory (also its cwd, so no ``.env``
is read), a private HOME and no proxy or RANGEFETCH_* variables, and every
output is checked by sha256 against the source. Runs of one scenario are
interleaved tool by tool, one at a time, except in ``trickle-all``, where the
rows of one repeat run at the same time (they wait on timers, not on the
CPU or the link). Results: Markdown on stdout, WORKDIR/results-slowpeers.json
and .md. Stdlib only; see bench/README.md, "Slow peers (issue #9)".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
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
import run as bench_run  # noqa: E402  (bench/run.py: machine facts, Tool)
from rangeserver import RangeServer  # noqa: E402  (tests/rangeserver.py)

MB = 10**6
NAME = "source.bin"
CONNECTIONS = 8
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
SCENARIOS = ("straggler", "straggler-long", "trickle-one", "trickle-all")
CAPS = {"straggler": 120.0, "straggler-long": 420.0, "trickle-one": 120.0, "trickle-all": 300.0}
TARGETS = {"straggler": 3.0, "straggler-long": 1.2}  # issue #9 item 6, rangefetch only
# What issue #9 measured before this work (straggler only).
BEFORE = {"rangefetch": 17.8, "aria2c": 29.0, "axel": 25.0}


@dataclass(frozen=True)
class Tool:
    """A row: a command template with ``{rf}``, ``{url}``, ``{out}``, ``{dir}``, ``{name}``."""

    name: str
    template: str
    note: str = ""  # what differs from the tool's defaults, for the tables
    straggle_faults: tuple[tuple[str, object], ...] = ()  # added to the straggle URL for this row

    def argv(self, rf: list[str], url: str, out: Path) -> list[str]:
        subs = {"url": url, "out": str(out), "dir": str(out.parent), "name": out.name}
        words: list[str] = []
        for w in shlex.split(self.template):
            if w == "{rf}":
                words += rf
            else:
                for k, v in subs.items():
                    w = w.replace("{" + k + "}", v)
                words.append(w)
        return words


RF = Tool("rangefetch", "{rf} get {url} -o {out} -c 8 -q")
ARIA2C = Tool("aria2c", "aria2c --no-conf --no-netrc -x8 -s8 -k1M --file-allocation=none"
                        " --allow-overwrite=true --auto-file-renaming=false -d {dir} -o {name} -q {url}")
AXEL = Tool("axel", "axel -n 8 -q -o {out} {url}")
CURL = Tool("curl", "curl -q -sS -o {out} {url}")
# axel's first GET (``bytes=0-``, its probe) is the first connection to ask for
# a range, so ``straggle=`` slows that one, which axel closes after the
# headers: its data connections all run at full speed.  This row slows the
# probe's connection and the next one, a data connection.
AXEL2 = Tool("axel straggle_conns=2", AXEL.template, straggle_faults=(("straggle_conns", 2),))
GIVE_UP_TOOLS = (
    RF,
    Tool("rangefetch -Y 100 -y 10", "{rf} get {url} -o {out} -c 8 -q --speed-limit 100 --speed-time 10",
         "--speed-limit 100 --speed-time 10"),
    ARIA2C,
    Tool("aria2c --lowest-speed-limit=100", ARIA2C.template.replace(" -q ", " --lowest-speed-limit=100 -q "),
         "--lowest-speed-limit=100"),
    AXEL,
    CURL,
    Tool("curl --speed-limit 100 --speed-time 10",
         "curl -q -sS --speed-limit 100 --speed-time 10 -o {out} {url}", "--speed-limit 100 --speed-time 10"),
)


@dataclass
class Run:
    key: str
    seconds: float = 0.0
    capped: bool = False  # hit the wall-clock cap and was killed
    exit_code: int | None = None
    sha256_ok: bool | None = None  # None: no file to check
    final_bytes: int | None = None  # size of whatever is at the final path (None: nothing)
    final_allocated: int | None = None  # bytes allocated on disk for it (a sparse file has few)
    error: str | None = None  # a wrong file, or a tool that could not run: never a time
    last_line: str = ""  # the tool's last line of output
    connections: int = 0  # distinct client ports the server saw for this key
    requests: int = 0  # GET requests
    served_bytes: int = 0  # body bytes the server wrote for this key (duplicates and aborts included)
    straggler_requests: int = 0
    ranges: list[str] = field(default_factory=list)  # the Range fields of the first GETs, in order


class Harness:
    def __init__(self, args: argparse.Namespace, server: RangeServer, source_sha: str, size: int) -> None:
        self.args, self.server, self.sha, self.size = args, server, source_sha, size
        self.workdir: Path = args.workdir
        default_rf = [str(Path(sys.executable).with_name("rangefetch"))]
        self.rf = shlex.split(args.rangefetch) if args.rangefetch else default_rf
        self.env = {k: v for k, v in os.environ.items()
                    if k.lower() not in PROXY_VARS and not k.upper().startswith("RANGEFETCH_")}
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
        self.running: set[int] = set()  # process groups to kill on the way out
        self.lock = threading.Lock()
        self.corrupt = False

    def url(self, key: str, **faults: object) -> str:
        return str(self.server.url(NAME, **faults, key=key))

    def run(self, scen: str, tool: Tool, label: str, i: int, cap: float, **faults: object) -> Run:
        """One download in a fresh directory, killed at ``cap`` seconds; its file is checked and removed."""
        key = re.sub(r"[^A-Za-z0-9-]+", "_", f"{scen}-{label}-{tool.name}-{i}-{secrets.token_hex(4)}")
        run = Run(key)
        exe = tool.argv(self.rf, "", Path("x"))[0]
        if shutil.which(exe) is None:
            run.error = f"{exe} not found"
            return run
        rundir = self.workdir / "dl" / key
        rundir.mkdir(parents=True)
        out = rundir / "out.bin"
        argv = tool.argv(self.rf, self.url(key, **faults), out)
        log = self.workdir / "logs" / f"{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    cwd=rundir, env=self.env, start_new_session=True)
            with self.lock:
                self.running.add(proc.pid)
            try:
                run.exit_code = proc.wait(timeout=cap)
                run.seconds = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                run.seconds, run.capped = cap, True
            finally:
                kill_group(proc.pid)  # the tool's leftovers too, or the tool itself at the cap
                proc.wait()
                with self.lock:
                    self.running.discard(proc.pid)
        lines = log.read_text(errors="replace").strip().splitlines()[1:]
        run.last_line = lines[-1][:160] if lines else ""
        if out.exists():
            st = out.stat()
            run.final_bytes, run.final_allocated = st.st_size, st.st_blocks * 512
            if run.exit_code == 0:
                with out.open("rb") as fh:
                    run.sha256_ok = hashlib.file_digest(fh, "sha256").hexdigest() == self.sha
        if run.exit_code == 0 and not run.capped:
            if run.sha256_ok is None:
                run.error = "exit 0 but no output file"
            elif not run.sha256_ok:
                run.error = "sha256 mismatch"
                with self.lock:
                    self.corrupt = True
        self.count(run)
        if run.error == "sha256 mismatch":  # keep the wrong file for a look
            print(f"  wrong file kept in {rundir}", file=sys.stderr)
        else:
            shutil.rmtree(rundir, ignore_errors=True)
        return run

    def count(self, run: Run) -> None:
        """What the server saw for this run's key."""
        mine = [r for r in self.server.requests if f"key={run.key}" in r.path]
        gets = [r for r in mine if r.method == "GET"]
        run.connections = len({r.client for r in mine})
        run.requests = len(gets)
        run.served_bytes = sum(r.sent for r in gets)
        run.straggler_requests = sum(r.straggler for r in gets)
        run.ranges = [r.headers.get("range", "-") for r in gets[:12]]


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def distributed_rows(h: Harness, *, workers: int = 2, jobs: int = 4) -> list[Tool]:
    """The ``rangefetch get --redis`` row: a private redis-server and ``workers`` workers of ``jobs`` jobs.

    They start here and run for the whole bench (so the row's seconds hold no
    worker start-up, as a cluster's would not); their process groups join
    ``h.running``, which ``main`` kills on the way out.  The workers' download
    directory is the work directory, so each run's ``-o`` (inside it) is a path
    both the producer and the workers agree on.  No row without redis-server.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        print("no redis-server: no distributed row", file=sys.stderr)
        return []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data_dir = h.workdir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = h.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def spawn(argv: list[str], log: Path, env: dict[str, str]) -> None:
        with log.open("w") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    cwd=h.workdir, env=env, start_new_session=True)
        with h.lock:
            h.running.add(proc.pid)

    spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(data_dir)], logs / "redis.log", h.env)
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
    env = {**h.env, "RANGEFETCH_REDIS_URL": redis_url, "RANGEFETCH_DOWNLOAD_DIR": str(h.workdir)}
    worker_logs = [logs / f"worker-{i}.log" for i in range(workers)]
    for log in worker_logs:
        spawn([*h.rf, "worker", "-c", str(jobs)], log, env)
    deadline = time.monotonic() + 60
    while not all("jobs at once" in log.read_text(errors="replace") for log in worker_logs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start within 60 s (see {logs})")
        time.sleep(0.1)
    where = shlex.quote(str(h.workdir))
    template = (f"env RANGEFETCH_REDIS_URL={redis_url} RANGEFETCH_DOWNLOAD_DIR={where}"
                " {rf} get {url} -o {out} -c 8 -q")
    return [Tool(f"rangefetch --redis ({workers} workers x {jobs})", template,
                 f"distributed: {workers} workers of {jobs} jobs, one private redis-server")]


# Summaries -----------------------------------------------------------------


def seconds_of(runs: list[Run]) -> list[float]:
    """Each run's seconds; a run killed at the cap counts as infinite for the median."""
    return [math.inf if r.capped else r.seconds for r in runs]


def med(runs: list[Run]) -> float:
    return float(statistics.median(seconds_of(runs)))


def error_of(runs: list[Run]) -> str | None:
    return next((r.error for r in runs if r.error), None)


def fmt_s(value: float, cap: float) -> str:
    return f">{cap:g} s" if math.isinf(value) else f"{value:.1f} s"


def fmt_runs(runs: list[Run], cap: float) -> str:
    return ", ".join(f">{cap:g}" if r.capped else f"{r.seconds:.1f}" for r in runs)


def ratio(num: float, den: float, cap: float) -> tuple[float | None, str]:
    if math.isinf(den):
        return None, "n/a"
    if math.isinf(num):
        return None, f">{cap / den:.1f}x"
    return num / den, f"{num / den:.2f}x"


def cell(text: str) -> str:
    return text.replace("|", "/")


# Scenarios -----------------------------------------------------------------


def straggler(h: Harness, scen: str, tools: list[Tool], repeat: int, cap: float,
              base_faults: dict[str, object], slow_faults: dict[str, object]) -> tuple[dict[str, Any], str]:
    runs: dict[str, dict[str, list[Run]]] = {t.name: {"baseline": [], "straggle": []} for t in tools}
    for i in range(repeat):  # interleaved, so drift in the machine's load hits every tool alike
        for t in tools:
            for label, faults in (("baseline", base_faults), ("straggle", {**slow_faults, **dict(t.straggle_faults)})):
                r = h.run(scen, t, label, i, cap, **faults)
                runs[t.name][label].append(r)
                progress(scen, f"{t.name} {label}", i, r, cap)
    rows, lines = [], []
    target = TARGETS[scen]
    head = ["tool", "baseline", "straggle", "straggle / baseline", "runs: baseline; straggle (s)",
            "conns / GETs (straggle)", "served / file (straggle)"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for t in tools:
        b, s = runs[t.name]["baseline"], runs[t.name]["straggle"]
        err = error_of(b + s)
        row: dict[str, Any] = {"tool": t.name, "command": t.template, "error": err,
                               "runs": {k: [asdict(r) for r in v] for k, v in runs[t.name].items()}}
        if err:
            lines.append(f"| {t.name} | — | — | — | — | — | FAILED: {cell(err)} |")
        else:
            mb, ms = med(b), med(s)
            x, xs = ratio(ms, mb, cap)
            row.update(baseline_s=None if math.isinf(mb) else mb, straggle_s=None if math.isinf(ms) else ms,
                       ratio=x, ratio_text=xs)
            conns = statistics.median(r.connections for r in s)
            gets = statistics.median(r.requests for r in s)
            served = statistics.median(r.served_bytes for r in s) / h.size
            row.update(straggle_connections=conns, straggle_gets=gets, straggle_served_per_file=served)
            mark = f" (target <= {target:g}x)" if t.name == "rangefetch" else ""
            lines.append(f"| {t.name} | {fmt_s(mb, cap)} | {fmt_s(ms, cap)} | {xs}{mark} | "
                         f"{fmt_runs(b, cap)}; {fmt_runs(s, cap)} | {conns:g} / {gets:g} | {served:.2f} |")
        rows.append(row)
    return {"base_faults": base_faults, "slow_faults": slow_faults, "cap_s": cap, "rows": rows}, "\n".join(lines)


def trickle_one(h: Harness, scen: str, tools: list[Tool], repeat: int, cap: float) -> tuple[dict[str, Any], str]:
    faults = {"slow_rate": 0.05, "skip": 1, "times": 1}
    runs: dict[str, list[Run]] = {t.name: [] for t in tools}
    for i in range(repeat):
        for t in tools:
            r = h.run(scen, t, "trickle", i, cap, **faults)
            runs[t.name].append(r)
            progress(scen, t.name, i, r, cap)
    rows, lines = [], []
    head = ["tool", "seconds to a correct file", "runs (s)", "conns / GETs", "served / file", "how a capped run ended"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for t in tools:
        rs = runs[t.name]
        err = error_of(rs)
        row: dict[str, Any] = {"tool": t.name, "command": t.template, "error": err, "runs": [asdict(r) for r in rs]}
        if err:
            lines.append(f"| {t.name} | — | — | — | — | FAILED: {cell(err)} |")
        else:
            m = med(rs)
            row["seconds"] = None if math.isinf(m) else m
            conns = statistics.median(r.connections for r in rs)
            gets = statistics.median(r.requests for r in rs)
            served = statistics.median(r.served_bytes for r in rs) / h.size
            capped = next((r for r in rs if r.capped), None)
            how = "—" if capped is None else (f"killed at {cap:g} s, {capped.final_bytes:,} B at the final path"
                                               if capped.final_bytes is not None else f"killed at {cap:g} s")
            lines.append(f"| {t.name} | {fmt_s(m, cap)} | {fmt_runs(rs, cap)} | {conns:g} / {gets:g} | "
                         f"{served:.2f} | {cell(how)} |")
        rows.append(row)
    return {"faults": faults, "cap_s": cap, "rows": rows}, "\n".join(lines)


def trickle_all(h: Harness, scen: str, tools: list[Tool], repeat: int, cap: float) -> tuple[dict[str, Any], str]:
    faults = {"rate": 0.05}
    runs: dict[str, list[Run]] = {t.name: [] for t in tools}
    for i in range(repeat):  # the rows of one repeat at once: they wait on timers, not on the CPU
        got: dict[str, Run] = {}

        def one(t: Tool, i: int, got: dict[str, Run]) -> None:
            got[t.name] = h.run(scen, t, "all", i, cap, **faults)

        threads = [threading.Thread(target=one, args=(t, i, got)) for t in tools]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for t in tools:
            runs[t.name].append(got[t.name])
            progress(scen, t.name, i, got[t.name], cap)
    rows, lines = [], []
    head = ["tool", "seconds to give up", "runs (s)", "exit", "left at the final path", "GETs", "last line"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for t in tools:
        rs = runs[t.name]
        err = error_of(rs)
        row: dict[str, Any] = {"tool": t.name, "command": t.template, "error": err, "runs": [asdict(r) for r in rs]}
        if err:
            lines.append(f"| {t.name} | — | — | — | — | — | FAILED: {cell(err)} |")
        else:
            m = med(rs)
            row["seconds"] = None if math.isinf(m) else m
            exits = sorted({"killed" if r.capped else str(r.exit_code) for r in rs})
            left = sorted({"nothing" if r.final_bytes is None else
                           f"{r.final_bytes:,} B ({r.final_allocated:,} B allocated)" for r in rs})
            gets = statistics.median(r.requests for r in rs)
            last = next((r.last_line for r in reversed(rs) if r.last_line and not r.capped), "") or "—"
            lines.append(f"| {t.name} | {fmt_s(m, cap)} | {fmt_runs(rs, cap)} | {', '.join(exits)} | "
                         f"{', '.join(left)} | {gets:g} | {cell(last[:100])} |")
        rows.append(row)
    return {"faults": faults, "cap_s": cap, "rows": rows}, "\n".join(lines)


def progress(scen: str, what: str, i: int, r: Run, cap: float) -> None:
    state = r.error or (f">{cap:g} s (killed)" if r.capped else f"{r.seconds:.1f} s, exit {r.exit_code}")
    print(f"[{scen}] {what} #{i + 1}: {state}; {r.connections} conns, {r.requests} GETs", file=sys.stderr)


# Main ----------------------------------------------------------------------


def facts(rf: list[str]) -> dict[str, str]:
    tools = [bench_run.Tool(n, (a,)) for n, a in (("rangefetch", rf[0]), ("aria2c", "aria2c"),
                                                  ("axel", "axel"), ("curl", "curl"))
             if shutil.which(a)]
    f = bench_run.machine_facts(tools)
    f.pop("nginx", None)  # not used here: the server is tests/rangeserver.py in this process
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    f["rangefetch tree"] = f"{head or '?'}" + (f" + {len(dirty.splitlines())} uncommitted files" if dirty else "")
    return f


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and case; the median is kept")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of: " + ", ".join(SCENARIOS))
    ap.add_argument("--tools", default="rangefetch,aria2c,axel",
                    help="straggler and trickle-one rows (trickle-all always runs its fixed rows)")
    ap.add_argument("--size", type=int, default=40_000_000, help="bytes in the random file")
    ap.add_argument("--straggle", type=float, default=100_000, help="straggler's bytes/s (straggler)")
    ap.add_argument("--long-rate", type=float, default=170_000,
                    help="every connection's bytes/s in straggler-long (the straggler gets a tenth)")
    ap.add_argument("--cap", action="append", default=[], metavar="SCENARIO=SECONDS",
                    help="wall-clock cap per run (defaults: " + ", ".join(f"{k}={v:g}" for k, v in CAPS.items()) + ")")
    ap.add_argument("--rangefetch", default="", help="command prefix for rangefetch (default: <venv>/bin/rangefetch)")
    ap.add_argument("--workdir", type=Path, default=BENCH / "out" / "slowpeers")
    ap.add_argument("--distributed", action="store_true",
                    help="add the `rangefetch get --redis` row to the straggler scenarios (distributed_rows)")
    args = ap.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    if bad := set(names) - set(SCENARIOS):
        ap.error(f"unknown scenario(s): {', '.join(sorted(bad))}")
    caps = dict(CAPS)
    for c in args.cap:
        k, _, v = c.partition("=")
        if k not in CAPS:
            ap.error(f"--cap {c}: unknown scenario")
        caps[k] = float(v)
    by_name = {t.name: t for t in (RF, ARIA2C, AXEL, CURL)}
    if bad := set(args.tools.split(",")) - set(by_name):
        ap.error(f"unknown tool(s): {', '.join(sorted(bad))}")
    tools = [by_name[n] for n in args.tools.split(",")]
    straggler_tools = tools + ([AXEL2] if AXEL in tools else [])
    if args.repeat < 1:
        ap.error("--repeat must be positive")
    args.workdir = args.workdir.resolve()
    shutil.rmtree(args.workdir / "dl", ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)

    data = os.urandom(args.size)
    sha = hashlib.sha256(data).hexdigest()
    server = RangeServer()
    server.add_file(NAME, data)
    h = Harness(args, server, sha, args.size)
    info = facts(h.rf)
    load0 = loadavg()
    results: dict[str, Any] = {"machine": info, "size": args.size, "repeat": args.repeat,
                               "source_sha256": sha, "loadavg_start": load0, "scenarios": {}}
    md = ["# rangefetch slow peers (issue #9)", "",
          "machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), "",
          f"file: {args.size:,} random bytes from tests/rangeserver.py on 127.0.0.1, {CONNECTIONS} connections;"
          f" median of {args.repeat} run(s); load average at the start: {load0}", ""]

    def stop(signum: int, _frame: Any) -> None:
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    t_start = time.monotonic()
    try:
        server.start()
        if args.distributed:
            straggler_tools = straggler_tools + distributed_rows(h)
        for scen in names:
            cap = caps[scen]
            if scen == "straggler":
                res, table = straggler(h, scen, straggler_tools, args.repeat, cap, {}, {"straggle": args.straggle})
                note = (f"baseline: the plain URL; straggle: `straggle={args.straggle:g}` (the first connection"
                        f" that asks for a range gets {args.straggle / 1000:g} kB/s for all its requests)."
                        f" Before this work (issue #9): " + ", ".join(f"{k} {v:g}x" for k, v in BEFORE.items()) +
                        ". axel's first GET is its probe (`bytes=0-`, closed after the headers), so plain"
                        " `straggle=` slows no axel data connection; the `axel straggle_conns=2` row slows"
                        " the probe's connection and the next one")
            elif scen == "straggler-long":
                rate, slow = args.long_rate, args.long_rate / 10
                res, table = straggler(h, scen, straggler_tools, args.repeat, cap, {"rate": rate},
                                       {"rate": rate, "straggle": slow})
                note = (f"every connection at `rate={rate:g}` B/s ({CONNECTIONS} x {rate / 1000:g} kB/s:"
                        f" {args.size / CONNECTIONS / rate:.1f} s of transfer per connection); the straggler"
                        f" at `straggle={slow:g}` (10x slower)")
            elif scen == "trickle-one":
                res, table = trickle_one(h, scen, tools, args.repeat, cap)
                note = ("`slow_rate=0.05&skip=1&times=1`: the second GET of the run (rangefetch: its first range"
                        " GET, after the probe's `bytes=0-0`) sends one byte every 20 s; everything else at full"
                        " speed. Default low-speed settings; served / file counts every body byte the server wrote")
            else:
                res, table = trickle_all(h, scen, list(GIVE_UP_TOOLS), args.repeat, cap)
                note = ("`rate=0.05`: every body sends one byte every 20 s. The rows of one repeat ran at"
                        " the same time. rangefetch, aria2c and axel with 8 connections as above; curl one")
            res["note"] = note
            results["scenarios"][scen] = res
            md += [f"### {scen}", "", note + f"; cap {cap:g} s per run.", "", table, ""]
            print(f"### {scen}\n\n{note}; cap {cap:g} s per run.\n\n{table}\n", file=sys.stderr)
    finally:
        with h.lock:
            for pgid in list(h.running):
                kill_group(pgid)
        server.stop()
    load1 = loadavg()
    results["loadavg_end"] = load1
    results["elapsed_s"] = time.monotonic() - t_start
    md.append(f"load average at the end: {load1}; the whole run took {results['elapsed_s'] / 60:.0f} min")
    text = "\n".join(md) + "\n"
    print(text)
    (args.workdir / "results-slowpeers.md").write_text(text)
    (args.workdir / "results-slowpeers.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if h.corrupt else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
