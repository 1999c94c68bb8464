"""What distributed mode costs per range: Redis commands, enqueue time, job overhead.

    python bench/overhead.py [--size 256M] [--chunk-size 256K] [--workers 2]

Serves a file from nginx on 127.0.0.1 (unthrottled, so the network is not the
bottleneck and the per-range costs show), starts a private redis-server and
``--workers`` ``rangefetch worker`` processes, then measures with many small
ranges:

* **enqueue**: wall time of ``rangefetch enqueue`` for the whole file, per range
  (the probe is included once, so this is an upper bound);
* **Redis commands per range**: ``INFO commandstats`` before and after one
  distributed download (enqueue, jobs, progress, finalizer, arq's polling),
  divided by the number of ranges, in all and by command (commands run by
  our Lua scripts count too); ``--workers 2`` and ``--workers 8`` show how
  it grows with the workers;
* **job overhead per range**: ``(distributed - embedded) * connections / ranges``,
  where distributed is the enqueue command plus the time from the download's
  ``created`` to its ``finished`` stamp in Redis,
  the extra time each range occupies a connection slot in distributed mode
  compared with the same ranges fetched embedded (same chunk size, same
  16 connections), i.e. queue latency, Redis round trips and the per-range
  fsync and digest.

Every download is checked by sha256.  Results go to stdout as Markdown and to
``WORKDIR/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import run as bench  # bench/run.py: nginx, the source file, sizes

CONNECTIONS = 16


def redis_calls(port: int) -> dict[str, int]:
    """Commands Redis has executed, by name (``INFO commandstats``)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    calls: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name] = int(fields["calls"])
    return calls


def timed(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Run ``argv``; return (seconds, stdout). Raise on failure."""
    began = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed, proc.stdout


def sha256_ok(path: Path, expected: str) -> bool:
    import hashlib
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest() == expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--chunk-size", default="256K")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out" / "overhead")
    parser.add_argument("--rangefetch", default=str(Path(sys.executable).parent / "rangefetch"))
    args = parser.parse_args()
    size, chunk = bench.parse_size(args.size), bench.parse_size(args.chunk_size)
    ranges = -(-size // chunk)
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source_sha = bench.ensure_source(work / "www", size)
    downloads = work / "dl"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()

    nginx = bench.Nginx(work, 8 * bench.MIB)
    redis_dir = work / "redis"
    shutil.rmtree(redis_dir, ignore_errors=True)
    redis_dir.mkdir()
    port = bench.free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nginx.start(size)
        url = f"http://127.0.0.1:{nginx.http_port}/{bench.SOURCE_NAME}"
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(redis_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        redis_url = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, "RANGEFETCH_REDIS_URL": redis_url, "RANGEFETCH_DOWNLOAD_DIR": str(downloads)}
        env_embedded = {k: v for k, v in env.items() if k != "RANGEFETCH_REDIS_URL"}
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        per_worker = max(1, CONNECTIONS // args.workers)
        for _ in range(args.workers):
            procs.append(subprocess.Popen([args.rangefetch, "worker", "-c", str(per_worker)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2)  # let the workers connect and announce themselves
        rf = [args.rangefetch]
        common = ["-c", str(CONNECTIONS), "--chunk-size", str(chunk)]

        # 1. Embedded, same ranges.
        t_embedded, _ = timed([*rf, "get", url, "-o", str(downloads / "embedded.bin"), *common, "-q"],
                              env_embedded, 600)
        ok_embedded = sha256_ok(downloads / "embedded.bin", source_sha)

        # 2. Distributed: commands counted around enqueue + workers + finalizer.
        before = redis_calls(port)
        t_enqueue, out = timed([*rf, "enqueue", url, "-o", "dist.bin", *common], env, 600)
        download_id = out.strip()
        timed([*rf, "wait", download_id], env, 600)
        after = redis_calls(port)
        by_command = {name: after[name] - before.get(name, 0) for name in after
                      if after[name] - before.get(name, 0) > 0}
        commands = sum(by_command.values())
        ok_dist = sha256_ok(downloads / "dist.bin", source_sha)
        # From the download's own record: enqueued -> complete, without the
        # start-up of the enqueue/wait processes and wait's polling interval.
        stamps = subprocess.run(["redis-cli", "-p", str(port), "HMGET", f"rangefetch:dl:{download_id}",
                                 "created", "finished"], capture_output=True, text=True, check=True).stdout.split()
        t_dist = float(stamps[1]) - float(stamps[0]) + t_enqueue
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        nginx.stop()

    result = {
        "size": size, "chunk_size": chunk, "ranges": ranges, "workers": args.workers, "connections": CONNECTIONS,
        "embedded_s": round(t_embedded, 3), "distributed_s": round(t_dist, 3),
        "enqueue_s": round(t_enqueue, 3), "enqueue_us_per_range": round(1e6 * t_enqueue / ranges, 1),
        "redis_commands": commands, "redis_commands_per_range": round(commands / ranges, 1),
        "overhead_ms_per_range": round(1e3 * (t_dist - t_embedded) * CONNECTIONS / ranges, 2),
        "sha256_ok": ok_embedded and ok_dist,
        "redis_commands_by_name": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
    }
    (work / "overhead.json").write_text(json.dumps(result, indent=2))
    print(f"{ranges} ranges of {chunk // 1024} KiB ({size / bench.MIB:g} MiB), {args.workers} workers, "
          f"{CONNECTIONS} connections, nginx on 127.0.0.1 unthrottled\n")
    print("| measure | value |\n|---|---|")
    print(f"| embedded download | {t_embedded:.2f} s |")
    print(f"| distributed download (enqueue, then created -> finished) | {t_dist:.2f} s |")
    print(f"| enqueue, per range | {result['enqueue_us_per_range']} µs |")
    print(f"| Redis commands, per range | {result['redis_commands_per_range']} |")
    print(f"| extra connection-slot time, per range | {result['overhead_ms_per_range']} ms |")
    print(f"| sha256 of both results | {'ok' if result['sha256_ok'] else 'MISMATCH'} |")
    print("\n| Redis command | calls | per range |\n|---|---|---|")
    for name, calls in result["redis_commands_by_name"].items():
        print(f"| {name} | {calls} | {calls / ranges:.2f} |")
    return 0 if result["sha256_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
