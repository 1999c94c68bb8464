"""docker-compose.yml and the Dockerfile: parsed and checked, then built and run for real.

The fast tests parse the files and check services, commands, volumes and
environment against the CLI and the settings.  ``test_compose_stack``
(marker ``compose``, run by ``bash tests/run.sh --compose``, not by the
default run) builds the image and runs the stack under a private dockerd
(tests/dockerd.py explains how, with no image registry): the README's
compose commands, as they are written there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerd import Compose, Dockerd, Unavailable, base_image, build_wheelhouse, copy_project, image_python
from pydantic import BaseModel
from rangeserver import RangeServer, RequestRecord

from rangefetch import Settings
from rangefetch.cli import cli
from rangefetch.program import EXTENSIONS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def dockerfile_list(instruction: str) -> list[str]:
    """The exec-form (JSON) argument list of the last ``instruction`` in the Dockerfile."""
    found = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", DOCKERFILE, re.MULTILINE)
    assert found, f"the Dockerfile has no exec-form {instruction}"
    value: list[str] = json.loads(found[-1])
    return value


def as_list(value: str | list[str]) -> list[str]:
    return value.split() if isinstance(value, str) else list(value)


def argv(service: str) -> list[str]:
    """What the container of ``service`` runs: its entrypoint plus its command."""
    spec = SERVICES[service]
    entrypoint = as_list(spec["entrypoint"]) if "entrypoint" in spec else dockerfile_list("ENTRYPOINT")
    command = as_list(spec["command"]) if "command" in spec else dockerfile_list("CMD")
    return entrypoint + command


def environment(service: str) -> dict[str, str]:
    """The service's environment, with ``${VAR:-default}`` read as its default."""
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _DEFAULT.sub(r"\1", str(v)) for k, v in env.items()}


def mounts(service: str) -> dict[str, str]:
    """Container path -> volume name (or host path) of the service's volumes."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            found[target] = source
    return found


def commands() -> set[str]:
    return set(cli.commands) | set(EXTENSIONS.commands)


def test_services() -> None:
    assert {"redis", "worker", "producer"} <= set(SERVICES)


def test_worker_runs_rangefetch_worker() -> None:
    assert argv("worker") == ["rangefetch", "worker"]
    assert "worker" in commands(), "no `rangefetch worker` command is registered"
    assert SERVICES["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # `--scale worker=N` needs a service without a fixed container name or host port.
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]


def test_producer_takes_commands_as_arguments() -> None:
    # `docker compose run --rm producer enqueue URL` replaces the command only.
    assert argv("producer")[0] == "rangefetch"
    entrypoint = SERVICES["producer"].get("entrypoint", dockerfile_list("ENTRYPOINT"))
    assert as_list(entrypoint) == ["rangefetch"]
    assert {"enqueue", "status", "wait", "cancel", "workers", "get"} <= commands()
    assert "profiles" in SERVICES["producer"], "`docker compose up` should not start the one-off producer"


@pytest.mark.parametrize("service", ["worker", "producer"])
def test_download_volume_is_shared(service: str) -> None:
    env = environment(service)
    target = env["RANGEFETCH_DOWNLOAD_DIR"]
    assert mounts(service)[target] == mounts("worker")[environment("worker")["RANGEFETCH_DOWNLOAD_DIR"]]
    assert mounts(service)[target] in COMPOSE["volumes"]


@pytest.mark.parametrize("service", ["worker", "producer"])
def test_redis_url_points_at_the_redis_service(service: str) -> None:
    url = urlsplit(environment(service)["RANGEFETCH_REDIS_URL"])
    assert url.scheme in ("redis", "rediss")
    assert url.hostname == "redis" and (url.port or 6379) == 6379


def test_every_setting_in_compose_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {k for service in SERVICES for k in environment(service) if k.startswith("RANGEFETCH_")}
    assert names
    for name in names:
        model: type[BaseModel] = Settings
        parts = name.removeprefix("RANGEFETCH_").lower().split("__")
        for i, part in enumerate(parts):
            assert part in model.model_fields, f"{name}: {part!r} is not a setting"
            annotation = model.model_fields[part].annotation
            if i < len(parts) - 1:
                assert isinstance(annotation, type) and issubclass(annotation, BaseModel), f"{name} is not nested"
                model = annotation
    for service in ("worker", "producer"):
        for key in list(os.environ):
            if key.startswith("RANGEFETCH_"):
                monkeypatch.delenv(key)
        for key, value in environment(service).items():
            monkeypatch.setenv(key, value)
        Settings()  # the values validate too


def test_redis_is_durable_and_healthchecked() -> None:
    redis = SERVICES["redis"]
    command = " ".join(as_list(redis["command"]))
    assert "--appendonly yes" in command
    assert redis["healthcheck"]["test"]
    assert mounts("redis")["/data"] in COMPOSE["volumes"]
    assert "ports" not in redis, "Redis stays on the compose network"


def test_dockerfile_installs_the_packages() -> None:
    assert dockerfile_list("ENTRYPOINT") == ["rangefetch"]
    # The usual base by default; a local one and a wheelhouse for offline builds.
    assert re.search(r"^ARG BASE=python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^ARG WHEELHOUSE=$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^COPY \. /src$", DOCKERFILE, re.MULTILINE)
    assert 'pip install --no-index --find-links "/src/$WHEELHOUSE" rangefetch' in DOCKERFILE
    assert "pip install /src" in DOCKERFILE
    assert "RANGEFETCH_DOWNLOAD_DIR=/downloads" in DOCKERFILE
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "tests", "bench"} <= ignored
    assert not {"rangefetch", "producer", "worker", "pyproject.toml", "README.md", "wheelhouse"} & ignored


# --- built and run for real (tests/dockerd.py) --------------------------------

WORKERS = 3
# Workers' settings for the run: a dead worker's range is taken up again
# after its lease, 20 s by default.
WORKER_ENV = {"RANGEFETCH_DISTRIBUTED__JOBS__LEASE": "5"}
MiB = 1024 * 1024
# The main file: 16 ranges of 1 MiB over 6 connections, each response paced
# at 200 kB/s, so each range takes about 5 s and the download about 15 s:
# every worker is in the middle of a range for most of it.
BIG_SIZE, BIG_RATE = 16 * MiB, 200_000
# The download that is cancelled and enqueued again: 8 ranges of 256 KiB at
# 8 kB/s, about 33 s each: still running when `cancel` comes, though each
# `compose run` may take 15 s on a loaded machine (20 kB/s was too fast).
RESUME_SIZE, RESUME_RATE = 2 * MiB, 8_000
# docker-init, mounted by `init: true`, is the one path Docker itself adds
# to a container's own file system.
DOCKER_INIT = {"C /usr", "C /usr/sbin", "A /usr/sbin/docker-init"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def offline_override(base: str) -> dict[str, Any]:
    """The compose file laid over docker-compose.yml for the run, with nothing from a registry.

    Redis runs Debian's redis-server from the base image, with the
    compose file's own command; the official image turns protected mode off
    at build time, Debian's must be told.  The workers get ``WORKER_ENV``.
    """
    command = [*SERVICES["redis"]["command"], "--protected-mode", "no"]
    return {
        "services": {
            "redis": {"image": base, "working_dir": "/data", "command": command},
            "worker": {"environment": WORKER_ENV},
        }
    }


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Compose, str]]:
    """A private dockerd, the base image and a copy of the project to build: ``(compose, base)``.

    Skips, with the reason, where dockerd cannot run (tests/dockerd.py).  At
    the end: the workers' logs, ``docker compose down -v``, the daemon
    stopped and its data root removed; the cached base rootfs stays.
    """
    for key, value in WORKER_ENV.items():  # the names and values are settings
        monkeypatch.setenv(key, value)
    assert Settings().distributed.jobs.lease == float(WORKER_ENV["RANGEFETCH_DISTRIBUTED__JOBS__LEASE"])
    started = time.monotonic()
    try:
        daemon = Dockerd().start()
    except Unavailable as exc:
        pytest.skip(f"Docker cannot run here: {exc}")
    try:
        try:
            base = base_image(daemon)
            python = image_python(daemon, base)
        except Unavailable as exc:
            pytest.skip(f"Docker cannot run here: {exc}")
        project = copy_project(ROOT, tmp_path / "project")
        assert build_wheelhouse(project) == python, "the wheels must come from the image's own Python"
        (project / "docker-compose.ci.yml").write_text(yaml.safe_dump(offline_override(base)))
        compose = Compose(
            daemon, project, name="rfci", files=["docker-compose.yml", "docker-compose.ci.yml"],
            # As the README says: keep RANGEFETCH_DISTRIBUTED__CLUSTER_SIZE in step with --scale.
            env={"RANGEFETCH_DISTRIBUTED__CLUSTER_SIZE": str(WORKERS)},
        )  # fmt: skip
        print(f"setup: {time.monotonic() - started:.1f} s ({' '.join(compose.command)})")
        try:
            yield compose, base
        finally:
            logs = compose("logs", "--no-color", "--tail=40", check=False, timeout=60)
            print(f"---- compose logs ----\n{logs.stdout[-6000:]}")
            compose.down()
    finally:
        daemon.stop()
        print(f"in all: {time.monotonic() - started:.1f} s")


def byte_range(record: RequestRecord) -> tuple[int, int] | None:
    """``(first, last)`` of a GET's ``Range: bytes=first-last``, else None."""
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.headers.get("range", ""))
    return (int(match[1]), int(match[2])) if match else None


def unfinished(record: RequestRecord) -> bool:
    """A range response that has begun and not sent all its bytes (yet)."""
    span = byte_range(record)
    return span is not None and record.status == 206 and 0 < record.sent < span[1] - span[0] + 1


def volume_files(root: Path) -> dict[str, str]:
    """Every file below ``root``: relative path -> sha256."""
    return {p.relative_to(root).as_posix(): digest(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.compose
def test_compose_stack(stack: tuple[Compose, str]) -> None:
    """The README's compose commands: build offline, scale to 3 workers, kill one mid-download."""
    compose, base = stack
    t0 = time.monotonic()
    compose("build", "--build-arg", f"BASE={base}", "--build-arg", "WHEELHOUSE=wheelhouse", timeout=900)
    t_build = time.monotonic()
    compose("up", "-d", "--scale", f"worker={WORKERS}", timeout=300)
    workers = compose.containers("worker")
    assert len(workers) == WORKERS
    by_address = {compose.address(name): name for name in workers}
    hostnames = {compose.dockerd.docker("inspect", "-f", "{{.Config.Hostname}}", w).stdout.strip() for w in workers}

    deadline = time.monotonic() + 60
    while True:  # every worker is up and has said so in Redis
        listed = compose("run", "--rm", "-T", "producer", "workers").stdout
        if all(host in listed for host in hostnames) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(host in listed for host in hostnames), listed

    big, resumed, small = os.urandom(BIG_SIZE), os.urandom(RESUME_SIZE), os.urandom(MiB)
    # Containers reach the host at their network's gateway; the server listens there.
    with RangeServer(host=compose.gateway()) as server:
        server.add_file("big.bin", big)
        server.add_file("resume.bin", resumed)
        server.add_file("small.bin", small)
        big_url = server.url("big.bin", rate=BIG_RATE)
        download_id = compose("run", "--rm", "-T", "producer", "enqueue", big_url, "--chunk-size", "1M", "-c", "6")
        download_id = download_id.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{16}", download_id), download_id

        # Kill (SIGKILL) a worker container while it is in the middle of a range.
        deadline = time.monotonic() + 60
        while not (busy := {r.client[0] for r in server.requests_for("big.bin") if unfinished(r)} & set(by_address)):
            assert time.monotonic() < deadline, "no worker ever had a range in flight"
            time.sleep(0.05)
        victim_address = sorted(busy)[0]
        victim = by_address[victim_address]
        compose.dockerd.docker("kill", victim)
        killed_at = time.monotonic()

        # Meanwhile: cancel a download, enqueue it again (same id: it resumes).
        resume_url = server.url("resume.bin", rate=RESUME_RATE)
        enqueue_resume = ("run", "--rm", "-T", "producer", "enqueue", resume_url, "--chunk-size", "256K")
        resume_id = compose(*enqueue_resume).stdout.strip()
        compose("run", "--rm", "-T", "producer", "cancel", resume_id)
        state = json.loads(compose("run", "--rm", "-T", "producer", "status", resume_id, "--json").stdout)
        assert state["state"] == "cancelled", state
        assert compose(*enqueue_resume).stdout.strip() == resume_id

        # `wait` ends when the download does and prints the sha256 the
        # finalizer computed; `status --watch` follows every download to its
        # end (off a terminal: status lines).
        done = compose("run", "--rm", "-T", "producer", "wait", download_id, "--max-time", "120", timeout=180)
        assert done.stdout.split() == [digest(big), "/downloads/big.bin"]
        watched = compose("run", "--rm", "-T", "producer", "status", "--watch", timeout=180)
        lines = watched.stdout.splitlines()
        for did, name in ((download_id, "big.bin"), (resume_id, "resume.bin")):
            assert any(line.split()[:3] == [did, name, "complete"] for line in lines), watched.stdout

        # All in one: enqueue, follow, exit like wait.
        got = compose("run", "--rm", "-T", "producer", "get", server.url("small.bin"), "-o", "isos/small.bin")
        assert got.stdout.split() == [digest(small), "/downloads/isos/small.bin"]

        requests = server.requests_for("big.bin")

    # The victim died (SIGKILL, not restarted) and its unfinished ranges were
    # fetched again by the other workers, from where it had got to.
    ended = compose.dockerd.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", victim)
    assert ended.stdout.split() == ["exited", "137"]
    cut = [r for r in requests if r.client[0] == victim_address and unfinished(r)]
    assert cut, "the killed worker had no range in flight"
    for r in cut:
        span = byte_range(r)
        assert span is not None
        first, last = span
        redone = [
            s for s in requests
            if s.client[0] in by_address and s.client[0] != victim_address and s.started > killed_at
            and (again := byte_range(s)) is not None and again[1] == last and first <= again[0] <= first + r.sent
            and s.sent == last - again[0] + 1
        ]  # fmt: skip
        assert redone, f"range {first}-{last} of the killed worker was never fetched again"

    # The files on the shared volume, and nothing else: no .part, no record.
    assert volume_files(compose.volume("downloads")) == {
        "big.bin": digest(big),
        "resume.bin": digest(resumed),
        "isos/small.bin": digest(small),
    }
    # Workers wrote nothing outside it: their own file systems are as the image left them.
    for name in workers:
        changed = set(compose.dockerd.docker("diff", name).stdout.splitlines()) - DOCKER_INIT
        assert not changed, f"{name} wrote outside /downloads: {sorted(changed)}"
    compose("down", timeout=180)
    print(f"build {t_build - t0:.1f} s, run {time.monotonic() - t_build:.1f} s")
