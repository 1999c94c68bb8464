"""docker-compose.yml and the Dockerfile agree with the CLI and the settings.

Docker is not available where the tests run, so the files are parsed and
checked: services, commands, volumes and environment.
"""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from rangefetch import Settings
from rangefetch.cli import cli

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
    return set(cli.commands) | {ep.name for ep in entry_points(group="rangefetch.commands")}


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
    for package in ("rangefetch", "producer", "worker"):
        assert re.search(rf"^COPY {package} ", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", DOCKERFILE, re.MULTILINE)
    assert "ENV RANGEFETCH_DOWNLOAD_DIR=/downloads" in DOCKERFILE
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env"} <= set(ignored)
