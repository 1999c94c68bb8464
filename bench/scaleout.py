"""The per-address scenario of bench/run.py: a mirror that limits each client address, and H hosts.

nginx's ``stream`` proxy takes at most ``PER_ADDRESS`` connections from one
source address (``limit_conn`` on ``$binary_remote_addr``) and caps each at
the bench's ``--cap`` (``proxy_download_rate``): one host gets at most
``PER_ADDRESS x cap``, however many connections it opens.  Each simulated
host is a loopback address of its own (Linux routes all of 127.0.0.0/8 to
``lo``): host n is ``127.0.0.(n + 1)``, so 127.0.0.1, where the harness,
Redis and the producer's probe live, is no host's.

The rows, each opening at most ``PER_ADDRESS`` connections per address
(the stream log, ``Sessions``, checks it):

* ``rangefetch-c4``: embedded ``rangefetch get -c 4 --interface`` host 1;
* ``aria2c-x4``: ``aria2c -x4 -s4 --interface`` host 1;
* ``rangefetch-Hh``: distributed, ``dist.sh`` with H workers, each
  ``worker -c 4 --interface`` its own host's address, and ``get -c 4H``;
* ``aria2c-mi-Hh``: ``aria2c -x4H -s4H --multiple-interface`` over the same
  H addresses (aria2c hands them out round-robin, 4 connections each).

Stdlib only, like run.py; the plot needs matplotlib (``pip install
'.[bench]'``) and is skipped, with a note, without it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB, MIB = 10**6, 1 << 20
PER_ADDRESS = 4  # connections nginx takes from one source address
HOSTS = (1, 2, 4)
ARIA2C_MAX_CONNECTIONS = 16  # aria2c's -x is at most 16
SCENARIO = "per-address"
STREAM_FORMAT = "$remote_addr $connection $status $bytes_sent $msec $session_time"


def address(host: int) -> str:
    """The loopback address that stands for host ``host`` (from 1)."""
    return f"127.0.0.{host + 1}"


def addresses(hosts: int) -> list[str]:
    return [address(n) for n in range(1, hosts + 1)]


def stream_config(port: int, upstream: int, cap: int, log: Path, per_address: int) -> str:
    """The nginx ``stream`` server of the scenario (inside ``stream {}``)."""
    return f"""
    # A mirror that limits each client address: {per_address} connections, each capped.
    # Over the limit nginx's stream module closes the connection at once (HTTP would say 503;
    # the stream log's $status says 503 for it).
    log_format per_address '{STREAM_FORMAT}';
    limit_conn_zone $binary_remote_addr zone=per_address:1m;
    server {{
        listen 127.0.0.1:{port};
        access_log "{log}" per_address;
        proxy_pass 127.0.0.1:{upstream};
        proxy_download_rate {cap};
        limit_conn per_address {per_address};
    }}"""


@dataclass
class Sessions:
    """What the stream log says about one run: sessions per address, refused ones, the most open at once."""

    accepted: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    most_open: int = 0  # the most sessions one address had open at once

    @classmethod
    def parse(cls, lines: list[str]) -> Sessions:
        found = cls()
        spans: dict[str, list[tuple[float, float]]] = {}
        for line in lines:
            parts = line.split()
            if len(parts) != 6:
                continue
            addr, _, status, _, end, length = parts
            if status != "200":
                found.refused += 1  # 503: over limit_conn, closed at once
                continue
            found.accepted[addr] = found.accepted.get(addr, 0) + 1
            stop = float(end)
            spans.setdefault(addr, []).append((stop - float(length), stop))
        for pairs in spans.values():
            events = sorted([(a, 1) for a, _ in pairs] + [(b, -1) for _, b in pairs], key=lambda e: (e[0], e[1]))
            now = 0
            for _, step in events:
                now += step
                found.most_open = max(found.most_open, now)
        return found


def tool_specs(rf_prefix: list[str], dist_sh: Path, hosts: tuple[int, ...], per_address: int) -> list[dict[str, Any]]:
    """The rows as run.py's ``Tool`` keyword arguments (name, argv, env, hosts, kind)."""
    c = str(per_address)
    aria2c = (
        "aria2c",
        "--no-conf",
        "--no-netrc",
        "-k1M",
        "--file-allocation=none",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "-d",
        "{dir}",
        "-o",
        "{name}",
        "-q",
    )
    one = address(1)
    specs: list[dict[str, Any]] = [
        dict(
            name=f"rangefetch-c{c}",
            argv=(*rf_prefix, "get", "{url}", "-o", "{out}", "-c", c, "-q", "--interface", one),
            hosts=1,
            kind="embedded",
        ),
        dict(
            name=f"aria2c-x{c}",
            argv=(*aria2c, f"-x{c}", f"-s{c}", f"--interface={one}", "{url}"),
            hosts=1,
            kind="aria2c",
        ),
    ]
    for h in hosts:
        specs.append(
            dict(
                name=f"rangefetch-{h}h",
                hosts=h,
                kind="distributed",
                argv=("/bin/sh", str(dist_sh), str(h), "{url}", "{out}", *rf_prefix),
                env=(
                    ("DIST_CONCURRENCY", c),
                    ("DIST_CONNECTIONS", str(per_address * h)),
                    ("DIST_INTERFACES", ",".join(addresses(h))),
                ),
            )
        )
    for h in hosts:
        x = per_address * h
        specs.append(
            dict(
                name=f"aria2c-mi-{h}h",
                hosts=h,
                kind="aria2c-mi",
                argv=(*aria2c, f"-x{x}", f"-s{x}", f"--multiple-interface={','.join(addresses(h))}", "{url}"),
                missing=None if x <= ARIA2C_MAX_CONNECTIONS else f"aria2c takes at most -x{ARIA2C_MAX_CONNECTIONS}",
            )
        )
    return specs


KIND_LABEL = {
    "embedded": "rangefetch get -c {c}, one address (embedded)",
    "aria2c": "aria2c -x{c}, one address",
    "distributed": "rangefetch distributed, {h} worker host(s) (worker -c {c} --interface)",
    "aria2c-mi": "aria2c -x{x} --multiple-interface over {h} address(es)",
}


def markdown(rows: list[dict[str, Any]], *, url: str, size: int, cap: int, per_address: int, repeat: int) -> str:
    """The scale-out table: throughput against H x the per-host limit and against aria2c --multiple-interface."""
    limit = per_address * cap  # bytes/s one host may have
    mi = {r["hosts"]: r for r in rows if r["kind"] == "aria2c-mi" and r["ok"]}
    head = [
        "client",
        "hosts",
        "MB/s",
        "x per-host limit",
        "x aria2c -mi (same hosts)",
        "CPU-s/GiB",
        "load avg",
        "peak RSS MiB",
        "sessions / refused / most open per address",
        "targets",
    ]
    lines = [
        f"### {SCENARIO}",
        "",
        f"`{url}`, median of {repeat} run(s); nginx `stream`: `limit_conn {per_address}` per source"
        f" address, `proxy_download_rate {cap / MIB:g}m` per connection, so one host gets at most"
        f" {per_address} x {cap / MIB:g} MiB/s = {limit / MB:.1f} MB/s. Host n is 127.0.0.(n+1)."
        " CPU-s/GiB: rangefetch computes the sha256 of every byte (about 0.7 CPU-s/GiB), aria2c"
        " does not; distributed rows count redis-server, the workers and `get`. load avg: the"
        " machine's 1-minute load average at the end of each run (median).",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for r in rows:
        label = KIND_LABEL[r["kind"]].format(c=per_address, h=r["hosts"], x=per_address * r["hosts"])
        if not r["ok"]:
            lines.append(
                "| "
                + " | ".join(
                    [label, str(r["hosts"]), *["—"] * (len(head) - 3), f"FAILED: {r['error']}".replace("|", "/")]
                )
                + " |"
            )
            continue
        rate = size / r["wall_s"]
        x_limit = rate / limit
        base = mi.get(r["hosts"])
        x_mi = rate / (size / base["wall_s"]) if base else None
        s = r["sessions"]
        cells = [
            label,
            str(r["hosts"]),
            f"{rate / MB:.1f}",
            f"{x_limit:.2f}",
            "—" if x_mi is None or r["kind"] == "aria2c-mi" else f"{x_mi:.2f}",
            f"{r['cpu_s_per_gib']:.2f}",
            f"{r['load']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{s['accepted']:g} / {s['refused']:g} / {s['most_open']:g}",
            targets(r, x_limit, x_mi),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def targets(row: dict[str, Any], x_limit: float, x_mi: float | None) -> str:
    """Issue #10's targets for the row, met or missed by how much."""
    h = row["hosts"]
    if row["kind"] == "distributed":
        want = 0.9 * h
        said = [f">= {want:.1f}x limit: " + ("met" if x_limit >= want else f"missed by {want - x_limit:.2f}x")]
        if x_mi is not None:
            said.append(">= 0.95x aria2c -mi: " + ("met" if x_mi >= 0.95 else f"missed by {0.95 - x_mi:.2f}x"))
        return "; ".join(said)
    if row["kind"] in ("embedded", "aria2c"):
        return "stays at 1x: " + ("yes" if x_limit <= 1.1 else f"no ({x_limit:.2f}x)")
    return ""


def summarize(runs: list[Any]) -> dict[str, Any]:
    """Medians of the scale-out extras of ``runs`` (run.py's ``Run``)."""
    return {
        "load": statistics.median(r.load for r in runs),
        "sessions": {
            "accepted": statistics.median(sum(r.sessions.accepted.values()) for r in runs),
            "refused": statistics.median(r.sessions.refused for r in runs),
            "most_open": max(r.sessions.most_open for r in runs),
        },
    }


def plot(rows: list[dict[str, Any]], path: Path, *, size: int, cap: int, per_address: int) -> str:
    """Write the throughput-against-hosts PNG to ``path``; a line saying what was written (or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: matplotlib is not installed (pip install '.[bench]'); {path} not written"
    limit = per_address * cap / MB
    ok = [r for r in rows if r["ok"]]
    hosts = sorted({r["hosts"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(hosts, [h * limit for h in hosts], "--", color="grey", label=f"H x per-host limit ({limit:.1f} MB/s)")
    ax.plot(hosts, [0.9 * h * limit for h in hosts], ":", color="grey", label="target: 0.9 x H x limit")
    styles = {
        "distributed": ("o-", "C0", "rangefetch distributed (worker -c 4 --interface per host)"),
        "aria2c-mi": ("s-", "C1", "aria2c -x4H --multiple-interface"),
        "embedded": ("^", "C2", "rangefetch get -c 4, one address"),
        "aria2c": ("v", "C3", "aria2c -x4, one address"),
    }
    for kind, (style, color, label) in styles.items():
        mine = sorted((r["hosts"], size / r["wall_s"] / MB) for r in ok if r["kind"] == kind)
        if mine:
            ax.plot([h for h, _ in mine], [v for _, v in mine], style, color=color, label=label, markersize=7)
    ax.set_xlabel("hosts (one loopback address each)")
    ax.set_ylabel("MB/s (10^6 bytes/s)")
    ax.set_xticks(hosts)
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"{size / (1 << 30):g} GiB from a mirror allowing {per_address} connections x {cap / MIB:g} MiB/s per address",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"plot written to {path}"
