"""Settings: defaults, RANGEFETCH_* environment variables, .env, keyword overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from rangefetch import Downloader, RetryPolicy, Settings, Timeouts, UsageError
from rangefetch.settings import DEFAULT_RETRY, DEFAULT_TIMEOUTS

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RANGEFETCH_* variables and no .env file unless a test sets them."""
    for name in list(os.environ):
        if name.upper().startswith("RANGEFETCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = Settings()
    assert s.connections == 16
    assert s.chunk_size is None
    assert s.timeouts == DEFAULT_TIMEOUTS == Timeouts(connect=15.0, stall=30.0, write=30.0)
    assert s.retry == DEFAULT_RETRY == RetryPolicy()
    assert s.read_size == MiB
    assert s.download_dir == Path(".")
    assert s.redis_url is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANGEFETCH_CONNECTIONS", "4")
    monkeypatch.setenv("RANGEFETCH_CHUNK_SIZE", "4M")
    monkeypatch.setenv("RANGEFETCH_READ_SIZE", "64KiB")
    monkeypatch.setenv("RANGEFETCH_TIMEOUTS__STALL", "60")
    monkeypatch.setenv("RANGEFETCH_RETRY__MAX_TRIES", "3")
    monkeypatch.setenv("RANGEFETCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    s = Settings()
    assert s.connections == 4
    assert s.chunk_size == 4 * MiB
    assert s.read_size == 64 * 1024
    assert s.timeouts == Timeouts(stall=60)  # the other timeouts keep their defaults
    assert s.retry.max_tries == 3 and s.retry.backoff == DEFAULT_RETRY.backoff
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("rangefetch_connections", "3")
    assert Settings().connections == 3


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANGEFETCH_CHUNK_SIZE", "")
    monkeypatch.setenv("RANGEFETCH_REDIS_URL", "")
    s = Settings()
    assert s.chunk_size is None and s.redis_url is None


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANGEFETCH_CONNECTIONS", "4")
    monkeypatch.setenv("RANGEFETCH_CHUNK_SIZE", "4M")
    monkeypatch.setenv("RANGEFETCH_TIMEOUTS__STALL", "60")
    s = Settings(connections=8, chunk_size="1M", timeouts=Timeouts(stall=5))
    assert (s.connections, s.chunk_size, s.timeouts.stall) == (8, MiB, 5)


def test_dotenv_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RANGEFETCH_CONNECTIONS=5\nRANGEFETCH_USER_AGENT=from-dotenv\n")
    monkeypatch.setenv("RANGEFETCH_CONNECTIONS", "6")
    s = Settings()
    assert s.connections == 6 and s.user_agent == "from-dotenv"


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANGEFETCH_NO_SUCH_SETTING", "x")
    Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RANGEFETCH_CONNECTIONS", "0"),
        ("RANGEFETCH_CONNECTIONS", "1000"),
        ("RANGEFETCH_CONNECTIONS", "many"),
        ("RANGEFETCH_TIMEOUTS__STALL", "0"),
        ("RANGEFETCH_TIMEOUTS__CONNECT", "-1"),
        ("RANGEFETCH_RETRY__JITTER", "2"),
        ("RANGEFETCH_RETRY__MAX_TRIES", "0"),
        ("RANGEFETCH_CHECKPOINT_INTERVAL", "0"),
    ],
)
def test_invalid_environment_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()


@pytest.mark.parametrize(("field", "value"), [("chunk_size", "lots"), ("chunk_size", "0"), ("read_size", "1.5M")])
def test_invalid_sizes_raise_usage_error(field: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # parse_size raises our UsageError, which pydantic passes through unwrapped.
    with pytest.raises(UsageError, match="invalid size"):
        Settings(**{field: value})  # type: ignore[arg-type]
    monkeypatch.setenv(f"RANGEFETCH_{field.upper()}", value)
    with pytest.raises(UsageError, match="invalid size"):
        Settings()


def test_invalid_keyword_values() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(connections=0)
    with pytest.raises(pydantic.ValidationError):
        Timeouts(stall=0)
    with pytest.raises(pydantic.ValidationError):
        RetryPolicy(jitter=-0.1)
    with pytest.raises(UsageError):
        Settings(chunk_size=1.5)


def test_settings_and_groups_are_frozen() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.connections = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        s.timeouts.stall = 1  # type: ignore[misc]


def test_groups_have_a_readable_repr() -> None:
    assert repr(Timeouts()) == "Timeouts(connect=15.0, stall=30.0, write=30.0)"
    assert "max_tries=8" in repr(RetryPolicy())


async def test_the_library_reads_no_rangefetch_variables_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the entry points read RANGEFETCH_* (Settings()); download() and
    # Downloader default to Settings.defaults(), which keeps the proxy and CA
    # variables every HTTP client honours.
    monkeypatch.setenv("RANGEFETCH_CONNECTIONS", "3")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert Settings().connections == 3
    built = Settings.defaults()
    assert (built.connections, built.https_proxy, type(built)) == (16, "http://127.0.0.1:9", Settings)
    assert Settings.defaults(connections=5).connections == 5
    monkeypatch.setenv("RANGEFETCH_RETRY__MAX_TRIES", "2")
    async with Downloader("http://127.0.0.1:9/f", max_workers=4) as downloader:
        assert (downloader.settings.connections, downloader.settings.retry.max_tries) == (4, DEFAULT_RETRY.max_tries)
