#!/usr/bin/env python3
"""Benchmark rangefetch against aria2c, axel and curl on a local nginx.

nginx on 127.0.0.1 serves one random file directly ("unthrottled") and through a
``stream`` proxy capping each TCP connection ("capped"), over plain HTTP and over
HTTPS with TLS 1.3 ("tls-unthrottled", "tls-capped"; the harness makes its own CA
with the openssl CLI), and through one that also limits each client address to 4
connections ("per-address": scale-out over H simulated hosts, bench/scaleout.py).
Stdlib only (the per-address plot needs matplotlib), Linux only; see bench/README.md.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import scaleout
from scaleout import Sessions

MB, MIB, GIB = 10**6, 1 << 20, 1 << 30
CONNECTIONS = 16
BASELINE = "aria2c"


@dataclass(frozen=True)
class Scenario:
    name: str
    tls: bool  # HTTPS (TLS 1.3) instead of plain HTTP
    capped: bool  # through the stream proxy that caps each TCP connection
    per_address: bool = False  # ... which also limits each source address (bench/scaleout.py)


SCENARIOS = {s.name: s for s in (Scenario("unthrottled", tls=False, capped=False),
                                 Scenario("capped", tls=False, capped=True),
                                 Scenario("tls-unthrottled", tls=True, capped=False),
                                 Scenario("tls-capped", tls=True, capped=True),
                                 Scenario(scaleout.SCENARIO, tls=False, capped=True,
                                          per_address=True))}
# Distributed-mode rows (dist.sh with N workers) run by default, by Scenario.tls;
# any other N runs when --tools names it, e.g. rangefetch-4w in a TLS scenario.
DIST_WORKERS = {False: (1, 2, 4), True: (2,)}
DIST_NAME = re.compile(r"rangefetch-([1-9][0-9]?)w")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
SOURCE_NAME = "source.bin"
# Proxies must never reroute a benchmark away from 127.0.0.1.
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
# Why the trampoline: execve() folds the peak RSS of the *old* address space
# into ru_maxrss (fs/exec.c: setmax_mm_hiwater_rss), so a tool spawned straight
# from this Python process would report at least our own peak (12-300 MiB).
# Instead a small /bin/sh starts the tool in the background, prints its pid and
# exits; as PR_SET_CHILD_SUBREAPER we inherit the orphan and wait4() it, which
# yields the tool's own rusage (plus that of the children it waited for).
TRAMPOLINE = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
PR_SET_CHILD_SUBREAPER = 36


def parse_size(text: str) -> int:
    """Parse ``1G``, ``256M``, ``8m``, ``512KiB`` or plain bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(float(m[1]) * 1024 ** " kmgt".index(m[2].lower() or " "))


@dataclass(frozen=True)
class Tool:
    """A command template; ``{url}``, ``{out}``, ``{dir}``, ``{name}``, ``{ca}`` are filled per run."""

    name: str
    argv: tuple[str, ...]
    missing: str | None = None  # why the tool cannot run at all
    tls_argv: tuple[str, ...] | None = None  # the template for TLS scenarios, if not argv
    tls_default: bool = True  # runs in TLS scenarios unless --tools picks the rows
    env: tuple[tuple[str, str], ...] = ()  # added to its environment
    per_address: bool = False  # a row of the per-address scenario only (and it runs only those)
    hosts: int = 0  # per-address rows: how many simulated hosts (addresses) it uses
    kind: str = ""  # per-address rows: scaleout.KIND_LABEL's key

    def command(self, url: str, out: Path, ca: Path, tls: bool) -> list[str]:
        argv = self.tls_argv if tls and self.tls_argv is not None else self.argv
        subs = {"url": url, "out": str(out), "dir": str(out.parent), "name": out.name,
                "ca": str(ca)}
        return [re.sub(r"\{(url|out|dir|name|ca)\}", lambda m: subs[m[1]], t) for t in argv]


@dataclass
class Run:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    connections: int = 0  # distinct TCP connections nginx served during the run
    requests: int = 0
    exit_code: int | None = None
    sha256_ok: bool | None = None
    error: str | None = None
    tls: str | None = None  # TLS scenarios: "$ssl_protocol $ssl_cipher" as nginx logged them
    load: float = 0.0  # the 1-minute load average when the run ended
    sessions: Sessions = field(default_factory=Sessions)  # per-address scenario: the stream log


def median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def first_error(runs: list[Run]) -> str | None:
    return next((r.error for r in runs if r.error), None)


def build_tools(args: argparse.Namespace) -> list[Tool]:
    """Turn the command line into the ordered list of tools to run.

    The plain-HTTP command lines are the ones every earlier result was measured
    with; the TLS variants only add what it takes to trust the bench CA.
    """
    c = str(CONNECTIONS)
    if args.rangefetch:
        rf_prefix, rf_missing = shlex.split(args.rangefetch), None
    else:
        script = Path(sys.executable).parent / "rangefetch"
        rf_prefix = [str(script)]
        rf_missing = None if script.exists() else f"console script not found: {script}"
    picked = [t for t in args.tools.split(",") if t]
    workers = set(DIST_WORKERS[False]) | {int(m[1]) for t in picked if (m := DIST_NAME.fullmatch(t))}
    if bad := sorted(n for n in workers if n > CONNECTIONS):
        raise SystemExit(f"at most {CONNECTIONS} workers (16 connections shared out): {bad}")
    aria2c = ("aria2c", "--no-conf", "--no-netrc", f"-x{c}", f"-s{c}", "-k1M",
              "--file-allocation=none", "--allow-overwrite=true",
              "--auto-file-renaming=false", "-d", "{dir}", "-o", "{name}", "-q", "{url}")
    rangefetch = (*rf_prefix, "get", "{url}", "-o", "{out}", "-c", c, "-q")
    tools = [
        Tool("rangefetch", rangefetch, rf_missing,
             tls_argv=(*rangefetch, "--ca-certificate", "{ca}")),
        # Distributed mode: a private redis-server and N workers, counted with the command.
        # In TLS scenarios dist.sh gets the CA as BENCH_CA from the environment.
        *(Tool(f"rangefetch-{n}w", ("/bin/sh", str(Path(__file__).resolve().parent / "dist.sh"), str(n),
                                    "{url}", "{out}", *rf_prefix),
               rf_missing or (None if shutil.which("redis-server") else "not installed: redis-server"),
               tls_default=n in DIST_WORKERS[True])
          for n in sorted(workers)),
        Tool("aria2c", aria2c, tls_argv=(*aria2c[:3], "--ca-certificate={ca}", *aria2c[3:])),
        # axel 2.17 cannot be given a CA file: -k (--insecure) skips verification.
        Tool("axel", ("axel", "-n", c, "-q", "-o", "{out}", "{url}"),
             tls_argv=("axel", "-n", c, "-k", "-q", "-o", "{out}", "{url}")),
        Tool("curl", ("curl", "-q", "-sS", "-o", "{out}", "{url}"),  # leading -q: no .curlrc
             tls_argv=("curl", "-q", "-sS", "--cacert", "{ca}", "-o", "{out}", "{url}")),
    ]
    dist_sh = Path(__file__).resolve().parent / "dist.sh"
    for spec in scaleout.tool_specs(rf_prefix, dist_sh, args.hosts, args.per_address):
        missing = spec.pop("missing", None)
        if spec["kind"] in ("embedded", "distributed"):
            missing = missing or rf_missing
        if spec["kind"] == "distributed" and not shutil.which("redis-server"):
            missing = missing or "not installed: redis-server"
        tools.append(Tool(**spec, missing=missing, per_address=True))
    for spec in args.extra:
        name, _, template = spec.partition("=")
        if not name or not template.strip():
            raise SystemExit(f"--extra expects NAME=COMMAND_TEMPLATE, got {spec!r}")
        tools.append(Tool(name, tuple(shlex.split(template))))
    wanted = set(picked) if picked else {t.name for t in tools}
    return [t if t.missing or shutil.which(t.argv[0]) else
            replace(t, missing=f"not installed: {t.argv[0]}") for t in tools if t.name in wanted]


def tools_for(scen: Scenario, tools: list[Tool], picked: bool) -> list[Tool]:
    """The rows of one scenario: all of ``tools`` if --tools chose them, else the defaults.

    The per-address scenario runs its own rows only (each opens at most 4
    connections per address), and only it runs them.
    """
    return [t for t in tools if t.per_address == scen.per_address and (picked or not scen.tls or t.tls_default)]


def ensure_tls(tls_dir: Path) -> tuple[Path, Path, Path]:
    """Make (or reuse) a CA and a server certificate for 127.0.0.1 and localhost.

    Uses the openssl CLI; ECDSA P-256 keys, the server certificate signed by
    the CA with subjectAltName IP:127.0.0.1 and DNS:localhost.  Everything is
    made again when a file is missing or the certificate no longer verifies
    against the CA (expired, or from another CA).  Returns (ca, cert, key).
    """
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, cert = (tls_dir / n for n in ("ca.key", "ca.pem", "server.key", "server.pem"))
    cnf, csr = tls_dir / "openssl.cnf", tls_dir / "server.csr"

    def openssl(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", *map(str, argv)], check=False, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    if all(p.exists() for p in (ca_key, ca, key, cert)) and openssl(
            "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", ca, cert).returncode == 0:
        return ca, cert, key
    if not shutil.which("openssl"):
        raise SystemExit("the TLS scenarios need the openssl CLI to make their certificates")
    print(f"making a CA and a server certificate in {tls_dir} ...", file=sys.stderr)
    cnf.write_text("""[req]
distinguished_name = dn
prompt = no
[dn]
CN = rangefetch bench
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    steps = [
        ("req", "-config", cnf, "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "3650",
         "-sha256", "-subj", "/CN=rangefetch bench CA", "-extensions", "ca_ext"),
        ("req", "-config", cnf, "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"),
        ("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-out", cert, "-days", "825",
         "-sha256", "-set_serial", str(secrets.randbits(63)), "-extfile", cnf,
         "-extensions", "server_ext"),
        ("verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", ca, cert),
    ]
    for step in steps:
        if (p := openssl(*step)).returncode != 0:
            raise SystemExit(f"openssl {step[0]} failed: {(p.stderr or p.stdout).strip()[-500:]}")
    csr.unlink()
    return ca, cert, key


def ensure_source(www: Path, size: int) -> str:
    """Create (or reuse) ``www/source.bin`` of ``size`` random bytes; return its sha256.

    A reused file is hashed again on every run (about a second per GiB): a
    cached digest was once found stale after the machine was restored from a
    snapshot, which made every tool look corrupt.
    """
    www.mkdir(parents=True, exist_ok=True)
    src = www / SOURCE_NAME
    if src.exists() and src.stat().st_size == size:
        with src.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    print(f"generating {size / MIB:g} MiB of random data in {src} ...", file=sys.stderr)
    digest, tmp = hashlib.sha256(), src.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for offset in range(0, size, 8 * MIB):
            chunk = os.urandom(min(size - offset, 8 * MIB))
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(src)  # never rewrite a file nginx may be serving in place
    return digest.hexdigest()


def wait_for_phase(phase: float) -> None:
    """Sleep until the wall clock's fraction of a second is ``phase``.

    nginx's rate limit counts whole seconds (``ngx_time()``) from each
    connection's start: a connection opened late in a second may burst up
    to a second's worth of data at once, one opened early in it almost
    nothing.  Started right after the previous run (which ends on such a
    tick), a tool would get the same burst every time, set by its own
    start-up time, and differ from the others by up to 1 s of cap.  Repeat
    ``i`` of ``N`` starts at phase ``(i + 0.5) / N`` instead, so every tool
    meets the same spread of phases.
    """
    time.sleep((phase - time.time() % 1.0) % 1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx as a foreground child: one plain http server, one capped stream proxy.

    With ``tls`` (CA, certificate, key) also an HTTPS server (TLS 1.3 only) and
    a second capped stream proxy in front of it, which passes TLS through.
    With ``per_address`` (connections per source address) also a capped stream
    proxy that takes at most that many connections from one address, with a
    log of its sessions (bench/scaleout.py).
    """

    def __init__(self, workdir: Path, cap: int, tls: tuple[Path, Path, Path] | None = None,
                 per_address: int = 0) -> None:
        self.workdir, self.cap, self.tls, self.per_address = workdir, cap, tls, per_address
        self.http_port, self.capped_port = free_port(), free_port()
        self.access_log = workdir / "access.log"
        self.tls_port = self.tls_capped_port = 0
        self.tls_access_log = workdir / "access-tls.log"
        if tls:
            self.tls_port, self.tls_capped_port = free_port(), free_port()
        self.limited_port = free_port() if per_address else 0
        self.stream_log = workdir / "stream-per-address.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, scen: Scenario) -> str:
        if scen.per_address:
            return f"http://127.0.0.1:{self.limited_port}/{SOURCE_NAME}"
        if scen.tls:
            port = self.tls_capped_port if scen.capped else self.tls_port
        else:
            port = self.capped_port if scen.capped else self.http_port
        return f"{'https' if scen.tls else 'http'}://127.0.0.1:{port}/{SOURCE_NAME}"

    def log(self, scen: Scenario) -> Path:
        return self.tls_access_log if scen.tls else self.access_log

    def config(self) -> str:
        w = self.workdir  # paths are quoted: the work dir may contain spaces
        tmp = " ".join(f'{k}_temp_path "{w}/tmp/{k}";'
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""load_module {STREAM_MODULE};
{user}worker_processes 2;
pid "{w}/nginx.pid";
error_log "{w}/error.log" warn;
events {{ worker_connections 1024; }}
http {{
    # $connection is a global serial number: distinct values = TCP connections.
    log_format bench '$connection $status $body_bytes_sent "$http_user_agent"';
    access_log "{self.access_log}" bench;{self._tls_format()}
    {tmp}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{ listen 127.0.0.1:{self.http_port}; root "{w}/www"; }}{self._tls_server()}
}}
stream {{
    # Caps every client TCP connection, whatever HTTP requests it carries.
    server {{
        listen 127.0.0.1:{self.capped_port};
        proxy_pass 127.0.0.1:{self.http_port};
        proxy_download_rate {self.cap};
    }}{self._tls_stream()}{self._per_address_stream()}
}}
"""

    def _per_address_stream(self) -> str:
        if not self.per_address:
            return ""
        return scaleout.stream_config(self.limited_port, self.http_port, self.cap, self.stream_log,
                                      self.per_address)

    # Without TLS the config is the plain one, byte for byte.
    def _tls_format(self) -> str:
        if not self.tls:
            return ""
        return """
    # The TLS server logs the same fields, then what each connection negotiated.
    log_format bench_tls '$connection $status $body_bytes_sent $ssl_protocol $ssl_cipher'
                         ' "$http_user_agent"';"""

    def _tls_server(self) -> str:
        if not self.tls:
            return ""
        _, cert, key = self.tls
        # Keep-alive as for the plain server (nginx's defaults).  sendfile is not
        # used over TLS: without kTLS nginx encrypts in user space.
        return f"""
    server {{
        listen 127.0.0.1:{self.tls_port} ssl;
        root "{self.workdir}/www";
        access_log "{self.tls_access_log}" bench_tls;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        ssl_protocols TLSv1.3;
        ssl_buffer_size 16k;
    }}"""

    def _tls_stream(self) -> str:
        if not self.tls:
            return ""
        return f"""
    # The same cap in front of the TLS server; TLS passes through untouched.
    server {{
        listen 127.0.0.1:{self.tls_capped_port};
        proxy_pass 127.0.0.1:{self.tls_port};
        proxy_download_rate {self.cap};
    }}"""

    def start(self, size: int) -> None:
        """Start nginx, wait until every endpoint serves the file, else raise RuntimeError."""
        w = self.workdir
        (w / "tmp").mkdir(exist_ok=True)
        (w / "nginx.conf").write_text(self.config())
        self.access_log.unlink(missing_ok=True)  # one format, one invocation per file
        self.tls_access_log.unlink(missing_ok=True)
        self.stream_log.unlink(missing_ok=True)
        with (w / "nginx.out").open("wb") as out:
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(w), "-e", str(w / "error.log"), "-c", "nginx.conf",
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + 15
        # The TLS endpoints must verify against the bench CA for 127.0.0.1.
        ctx = ssl.create_default_context(cafile=self.tls[0]) if self.tls else None
        ports: list[tuple[int, ssl.SSLContext | None]] = [(self.http_port, None),
                                                           (self.capped_port, None)]
        ports += [(p, ctx) for p in (self.tls_port, self.tls_capped_port) if ctx]
        ports += [(self.limited_port, None)] if self.per_address else []
        for port, context in ports:
            while not self._answers(port, size, context):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (w / "error.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"nginx not serving on :{port}\n{tail}")
                time.sleep(0.1)

    @staticmethod
    def _answers(port: int, size: int, context: ssl.SSLContext | None = None) -> bool:
        conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
                if context else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
        try:
            conn.request("HEAD", f"/{SOURCE_NAME}")
            resp = conn.getresponse()
            return resp.status == 200 and resp.getheader("Content-Length") == str(size)
        except ssl.SSLCertVerificationError:
            raise  # the certificate is wrong: waiting will not help
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Fast-shutdown nginx (SIGTERM); kill its process group if it lingers."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def kill_group(pgid: int, *, reap: bool) -> None:
    """SIGKILL a tool's session; with ``reap``, also collect its zombies."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with contextlib.suppress(ChildProcessError):
        while reap:
            os.waitpid(-pgid, 0)


def run_once(tool: Tool, url: str, out: Path, source_sha: str, timeout: float,
             env: dict[str, str], log: Path, access_log: Path, ca: Path, tls: bool,
             stream_log: Path | None = None) -> Run:
    """Run one download, measuring wall time and the tool's rusage via wait4.

    With ``stream_log`` (the per-address scenario) the sessions it logged
    during the run are counted too.
    """
    if tool.missing:
        return Run(error=tool.missing)
    out.unlink(missing_ok=True)
    argv = tool.command(url, out, ca, tls)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in tool.env)
    log.write_text(f"$ {shown + ' ' if shown else ''}{shlex.join(argv)}\n")
    env = {**env, **dict(tool.env)}
    mark = access_log.stat().st_size
    stream_mark = stream_log.stat().st_size if stream_log is not None and stream_log.exists() else 0
    t0 = time.perf_counter()
    sh = subprocess.Popen(["/bin/sh", "-c", TRAMPOLINE, "sh", str(log), *argv],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          env=env, start_new_session=True)
    pid = int(sh.communicate(timeout=10)[0])  # the tool is now our child
    timer = threading.Timer(timeout, kill_group, (sh.pid,), {"reap": False})
    timer.start()
    try:
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
    finally:  # stragglers, or the tool itself if we were interrupted
        timer.cancel()
        kill_group(sh.pid, reap=True)
    with access_log.open("rb") as f:
        f.seek(mark)
        served = f.read().decode(errors="replace").splitlines()
    code = os.waitstatus_to_exitcode(status)
    run = Run(wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mib=ru.ru_maxrss / 1024,
              connections=len({ln.split(" ", 1)[0] for ln in served}), requests=len(served),
              exit_code=code, load=os.getloadavg()[0])
    if stream_log is not None and stream_log.exists():
        time.sleep(0.2)  # nginx writes a session's line when the session ends, in its own process
        with stream_log.open("rb") as f:
            f.seek(stream_mark)
            run.sessions = Sessions.parse(f.read().decode(errors="replace").splitlines())
    if tls:  # bench_tls: connection status bytes protocol cipher "user agent"
        run.tls = ", ".join(sorted({" ".join(ln.split(" ", 5)[3:5]) for ln in served})) or None
    if wall >= timeout:
        run.error = f"timeout after {timeout:.0f}s"
    elif code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[1:] or ["(no output)"]
        run.error = f"exit {code}: {tail[-1][:120]}"
    elif not out.exists():
        run.sha256_ok, run.error = False, "exit 0 but no output file"
    else:
        with out.open("rb") as f:
            run.sha256_ok = hashlib.file_digest(f, "sha256").hexdigest() == source_sha
        run.error = None if run.sha256_ok else "sha256 mismatch"
    # A wrapper that starts services first (dist.sh: redis and the workers)
    # reports the seconds of the download itself in OUT.seconds: that is the
    # throughput a running cluster gives.  CPU and RSS still count everything.
    seconds = out.with_name(out.name + ".seconds")
    if seconds.exists():
        run.wall_s = float(seconds.read_text())
        seconds.unlink()
    out.unlink(missing_ok=True)  # also drops its dirty pages before the next tool runs
    return run


def row_json(tool: str, runs: list[Run], size: int, cap: int, base: list[Run] | None,
             capped: bool) -> dict[str, Any]:
    """Summarise one tool's runs (medians) for one scenario, relative to ``base``."""
    err = first_error(runs)
    d: dict[str, Any] = {"tool": tool, "ok": err is None, "error": err,
                         "runs": [asdict(r) for r in runs]}
    if err is None:
        wall, cpu = median(runs, "wall_s"), median(runs, "cpu_s")
        d.update(wall_s=wall, mb_s=size / wall / MB, mib_s=size / wall / MIB, cpu_s=cpu,
                 cpu_s_per_gib=cpu * GIB / size, peak_rss_mib=median(runs, "peak_rss_mib"),
                 connections=median(runs, "connections"), requests=median(runs, "requests"),
                 sha256_ok=True)
        if capped:
            d["pct_of_16x_cap"] = 100 * size / wall / (CONNECTIONS * cap)
        if base and first_error(base) is None:
            base_cpu = median(base, "cpu_s")
            d["x_aria2c_throughput"] = median(base, "wall_s") / wall
            d["x_aria2c_cpu"] = cpu / base_cpu if base_cpu else None
    return d


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(name: str, url: str, rows: list[dict[str, Any]], size: int, cap: int | None,
             repeat: int) -> str:
    """One scenario as a Markdown table; ``cap`` is set for the capped scenarios."""
    head = ["tool", "MB/s", "x aria2c", "CPU-s/GiB", "x aria2c", "peak RSS MiB",
            "conns/reqs", "sha256 ok"]
    note = f"`{url}`, median of {repeat} run(s)"
    negotiated: dict[str, list[str]] = {}  # "TLSv1.3 TLS_AES_..." -> tools
    for r in rows:
        for tls in sorted({run["tls"] for run in r["runs"] if run.get("tls")}):
            negotiated.setdefault(tls, []).append(r["tool"])
    if len(negotiated) == 1:
        note += f"; nginx logged {next(iter(negotiated))} for every request"
    elif negotiated:
        note += "; nginx logged: " + "; ".join(
            f"{tls} ({', '.join(tools)})" for tls, tools in negotiated.items())
    if cap:
        head.insert(2, f"% of {CONNECTIONS} x cap")
        note += (f"; cap {cap / MIB:g} MiB/s per connection, so {CONNECTIONS} x cap ="
                 f" {CONNECTIONS * cap / MB:.1f} MB/s. nginx grants every new connection a"
                 f" 1-2 s burst, so short transfers ({size / CONNECTIONS / cap:.2g} s of cap per"
                 " connection here) and reconnects can beat 100%.")
    lines = [f"### {name}", "", note, "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        if not r["ok"]:
            error = f"FAILED: {r['error']}".replace("|", "/")
            lines.append("| " + " | ".join([r["tool"], *["—"] * (len(head) - 2), error]) + " |")
            continue
        cells = [r["tool"], fmt(r["mb_s"], ".1f"), fmt(r.get("x_aria2c_throughput"), ".2f"),
                 fmt(r["cpu_s_per_gib"], ".2f"), fmt(r.get("x_aria2c_cpu"), ".2f"),
                 fmt(r["peak_rss_mib"], ".1f"), f"{r['connections']:g}/{r['requests']:g}", "yes"]
        if cap:
            cells.insert(2, fmt(r["pct_of_16x_cap"], ".0f") + "%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        lines = (p.stdout or p.stderr).strip().splitlines()
        return lines[0] if lines else f"{argv[0]}: no output"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: unavailable ({exc.__class__.__name__})"


def machine_facts(tools: list[Tool]) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
               platform.machine())
    facts = {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
             "python": platform.python_version(), "nginx": first_line(["nginx", "-v"])}
    seen: set[str] = set()  # one line per program (the per-address rows run aria2c five ways)
    for t in tools:
        if not t.missing and t.argv[0] != "/bin/sh" and t.argv[0] not in seen:  # a wrapper has no version
            seen.add(t.argv[0])
            facts[t.name] = first_line([t.argv[0], "--version"])
    return facts


def tls_facts() -> str:
    """The TLS library behind nginx and each client (TLS scenarios only)."""
    def lib(argv: list[str], pattern: str) -> str:
        try:
            p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"
        m = re.search(pattern, p.stdout + p.stderr)
        return m[1] if m else "n/a"

    axel = shutil.which("axel")
    return "; ".join([
        "nginx " + lib(["nginx", "-V"], r"built with (.*)"),
        "aria2c " + lib(["aria2c", "--version"], r"((?:GnuTLS|OpenSSL)/\S+)"),
        "curl " + lib(["curl", "--version"], r"((?:OpenSSL|GnuTLS|wolfSSL|mbedTLS)/\S+)"),
        "axel " + (lib(["ldd", axel], r"(libssl\S*|libgnutls\S*)") if axel else "n/a"),
        "python (rangefetch) " + ssl.OPENSSL_VERSION])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=GIB, help="file size, e.g. 1G, 256M")
    ap.add_argument("--cap", type=parse_size, default=8 * MIB,
                    help="per-connection cap of the capped scenarios (8m = 8 MiB/s, as in nginx)")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma list of: " + ", ".join(SCENARIOS))
    ap.add_argument("--tools", default="", help="comma list of tools to run (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the median is kept")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run (default: 60 + 1.5 x one connection's capped time)")
    ap.add_argument("--rangefetch", default="", help="command prefix to run rangefetch")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=TEMPLATE",
                    help="extra tool row; {url}, {out}, {dir}, {name} and {ca} are substituted"
                         " (repeatable)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any row failed")
    ap.add_argument("--hosts", default=",".join(map(str, scaleout.HOSTS)),
                    help="per-address scenario: comma list of host counts H (default 1,2,4)")
    ap.add_argument("--per-address", type=int, default=scaleout.PER_ADDRESS,
                    help="per-address scenario: connections nginx takes from one address (default 4)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="per-address scenario: where the PNG goes (default WORKDIR/scaleout.png)")
    args = ap.parse_args()
    try:
        args.hosts = tuple(sorted({int(h) for h in args.hosts.split(",") if h}))
    except ValueError:
        ap.error(f"--hosts expects a comma list of numbers, got {args.hosts!r}")
    if not args.hosts or not all(1 <= h <= 200 for h in args.hosts) or args.per_address < 1:
        ap.error("--hosts must be numbers from 1 to 200, --per-address positive")
    names = [s for s in args.scenarios.split(",") if s]
    if bad := set(names) - set(SCENARIOS):
        ap.error(f"unknown scenario(s): {', '.join(sorted(bad))}")
    scenarios = [SCENARIOS[s] for s in names]
    if args.repeat < 1 or args.size < 1 or args.cap < 1:
        ap.error("--repeat, --size and --cap must be positive")
    timeout = args.timeout or 60 + 1.5 * args.size / args.cap

    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through finally -> nginx.stop()
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    workdir: Path = args.workdir.resolve()
    dl, logs, home = workdir / "dl", workdir / "logs", workdir / "home"
    for d in (dl, logs, home):
        d.mkdir(parents=True, exist_ok=True)
    lock = (workdir / ".lock").open("w")  # held until exit; shared paths would clash
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        ap.error(f"another bench run is using {workdir}; pass a different --workdir")
    # A private HOME keeps ~/.curlrc, ~/.axelrc, ~/.netrc and aria2's files out.
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    tools = build_tools(args)
    source_sha = ensure_source(workdir / "www", args.size)
    # TLS material only when a TLS scenario runs: the plain ones need no openssl.
    ca = workdir / "tls" / "ca.pem"  # {ca}, in every scenario
    tls = ensure_tls(ca.parent) if any(s.tls for s in scenarios) else None
    facts = machine_facts(tools)
    if tls:
        facts["tls"] = tls_facts()
    nginx = Nginx(workdir, args.cap, tls,
                  per_address=args.per_address if any(s.per_address for s in scenarios) else 0)
    results: dict[str, Any] = {"machine": facts, "size": args.size, "cap": args.cap,
                               "repeat": args.repeat, "timeout_s": timeout,
                               "source_sha256": source_sha, "scenarios": {}}
    md = ["# rangefetch bench", "", "machine: " + "; ".join(f"{k}: {v}" for k, v in facts.items()),
          "", f"file: {args.size / MIB:g} MiB; MB = 10^6 bytes; nginx's CPU is not counted", ""]
    corrupt = failed = False
    try:
        nginx.start(args.size)
        for scen in scenarios:
            url = nginx.url(scen)
            scen_tools = tools_for(scen, tools, picked=bool(args.tools))
            runs: dict[str, list[Run]] = {t.name: [] for t in scen_tools}
            for i in range(args.repeat):  # interleave tools so drift hits all of them alike
                for t in scen_tools:
                    run_env = env
                    if scen.tls:  # dist.sh passes it on to its workers and `get`
                        run_env = {**run_env, "BENCH_CA": str(ca)}
                    if scen.capped:
                        phase = (i + 0.5) / args.repeat
                        wait_for_phase(phase)
                        # dist.sh starts Redis and workers first, then waits for the phase again.
                        run_env = {**run_env, "BENCH_PHASE": f"{phase:.3f}"}
                    run = run_once(t, url, dl / f"{t.name}.bin", source_sha, timeout, run_env,
                                   logs / f"{scen.name}-{t.name}-{i}.log", nginx.log(scen), ca,
                                   scen.tls, nginx.stream_log if scen.per_address else None)
                    runs[t.name].append(run)
                    print(f"[{scen.name}] {t.name} #{i + 1}: " + (run.error or
                          f"{args.size / run.wall_s / MB:.1f} MB/s, {run.cpu_s:.2f} CPU-s"),
                          file=sys.stderr)
                    corrupt |= run.exit_code == 0 and run.sha256_ok is False
                    failed |= run.error is not None
            cap = args.cap if scen.capped else None
            table = [row_json(name, rs, args.size, args.cap, runs.get(BASELINE), cap is not None)
                     for name, rs in runs.items()]
            results["scenarios"][scen.name] = {"url": url, "rows": table}
            if scen.per_address:
                by_name = {t.name: t for t in scen_tools}
                for row in table:
                    t = by_name[row["tool"]]
                    row.update(hosts=t.hosts, kind=t.kind)
                    if row["ok"]:
                        row.update(scaleout.summarize(runs[t.name]))
                md.append(scaleout.markdown(table, url=url, size=args.size, cap=args.cap,
                                            per_address=args.per_address, repeat=args.repeat))
                plotted = scaleout.plot(table, args.plot or workdir / "scaleout.png", size=args.size,
                                        cap=args.cap, per_address=args.per_address)
                md.append(plotted + "\n")
                print(plotted, file=sys.stderr)
            else:
                md.append(markdown(scen.name, url, table, args.size, cap, args.repeat))
    finally:
        nginx.stop()
    text = "\n".join(md)
    print(text)
    (workdir / "results.md").write_text(text)
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if corrupt or (args.strict and failed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # nginx and the running tool were stopped on the way out
        sys.exit(130)
