"""Settings: one pydantic-settings class, built once at each entry point.

Values come, highest priority first, from keyword arguments (the CLI's
flags), ``RANGEFETCH_*`` environment variables, and a ``.env`` file.  Nested
groups use ``__``: ``RANGEFETCH_TIMEOUTS__STALL=60``.  Nothing below an entry
point reads the environment; the ``Settings`` object is passed down instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .distributed.keys import DEFAULT_QUEUE
from .plan import parse_size

__all__ = [
    "DEFAULT_DISTRIBUTED",
    "DEFAULT_JOBS",
    "DEFAULT_LOW_SPEED",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "Distributed",
    "JobLimits",
    "LowSpeed",
    "RetryPolicy",
    "Settings",
    "Timeouts",
]


def _size_or_none(value: Any) -> Any:
    if value is None or value == "":
        return None
    return parse_size(value)


def _rate(value: Any) -> Any:
    if value in (0, "0"):
        return 0
    return parse_size(value)


def _seconds_or_none(value: Any) -> Any:
    return None if value in (None, "", 0, "0") else value


Size = Annotated[int, BeforeValidator(parse_size)]
Rate = Annotated[int, BeforeValidator(_rate)]


class Timeouts(BaseModel):
    """How long to wait, in seconds.

    ``stall`` is the longest a transfer may go without receiving one byte
    before the connection is dropped and the range resumed elsewhere.
    """

    model_config = ConfigDict(frozen=True)

    connect: float = Field(15.0, gt=0)
    stall: float = Field(30.0, gt=0)
    write: float = Field(30.0, gt=0)


class LowSpeed(BaseModel):
    """The low-speed rule: curl's ``--speed-limit``/``--speed-time``, aria2c's ``--lowest-speed-limit``.

    A connection that brings fewer than ``limit`` bytes a second, on average
    over ``time`` seconds, is closed and its range re-opened on a fresh
    connection from the last byte written.  Such a trip counts as a failed
    try (``RetryPolicy.max_tries`` in a row fail the range) unless the
    connection first brought a whole window's worth (``window``).
    ``limit`` 0 turns the rule off.

    The defaults, 1 KiB/s over 30 s: the window is as long as the stall
    timeout, so a trickle is given up as soon as silence would be, and a
    link with 16 connections must fall below 16 KiB/s in all before a healthy
    connection trips, far below any working link.  One byte every 20 s (which
    the stall timeout never catches) trips after 30 s.
    """

    model_config = ConfigDict(frozen=True)

    limit: Rate = Field(1024, ge=0)
    time: float = Field(30.0, gt=0)

    @property
    def window(self) -> int:
        """Bytes that must arrive within ``time`` seconds (0: the rule is off)."""
        return math.ceil(self.limit * self.time)


DEFAULT_BACKOFF_MAX = 30.0


class RetryPolicy(BaseModel):
    """When and how often to retry a transient failure.

    The delay before try ``n`` (from 1) is ``min(backoff_max, backoff * 2**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]``, unless the server sent
    ``Retry-After``, which wins (capped at ``retry_after_max``); ``backoff_max``
    is lifted to ``backoff`` when it is lower.  A try that
    made progress resets the count, so a range on a flaky link keeps going as
    long as bytes keep arriving.
    """

    model_config = ConfigDict(frozen=True)

    max_tries: int = Field(8, ge=1)
    backoff: float = Field(0.5, ge=0)
    backoff_max: float = Field(DEFAULT_BACKOFF_MAX, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)
    retry_after_max: float = Field(300.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _backoff_max_covers_backoff(cls, data: Any) -> Any:
        # ``--retry-wait 60`` means a first wait of up to 60 s: the cap is
        # never below the base (a lower one would make the base meaningless).
        if isinstance(data, dict) and "backoff" in data:
            try:
                if float(data["backoff"]) > float(data.get("backoff_max", DEFAULT_BACKOFF_MAX)):
                    return {**data, "backoff_max": data["backoff"]}
            except (TypeError, ValueError):
                pass  # the fields' own validation says what is wrong
        return data


class JobLimits(BaseModel):
    """How long distributed jobs may run and hold things, in seconds (``worker/`` explains the choice).

    A range job fetches for at most ``budget`` seconds, then saves its
    progress and continues as a fresh job, so it never reaches arq's
    ``timeout`` (which arq treats as a permanent failure).  The finalizer
    hashes the whole file and gets ``finalize_timeout``; with ``verify_early``
    a worker hashes the ranges in order as they finish, so the finalizer
    only has to confirm.  Whatever a job
    claims (arq's in-progress key, connection slots, the finalizer guard) is
    leased for ``lease`` seconds and renewed while the job runs, so the work
    of a worker that died is taken up again ``lease`` seconds later.
    """

    model_config = ConfigDict(frozen=True)

    budget: float = Field(40.0, gt=0, description="seconds a range job fetches before it continues as a new job")
    timeout: float = Field(120.0, gt=0, description="arq timeout of a range job: budget + fsync + hashing")
    finalize_timeout: float = Field(3600.0, gt=0, description="arq timeout of the finalizer (hashes the file)")
    lease: float = Field(20.0, gt=0, description="seconds a dead worker's job, slots and guard stay claimed")
    slot_wait: float = Field(1.0, gt=0, description="mean delay before a job that found no free slot retries")
    max_attempts: int = Field(5, ge=1, description="range job runs in a row without progress before it fails")
    per_download: int = Field(
        64, ge=1, description="range jobs a download's ranges go to, at most: each fetches a run of ranges in turn"
    )
    verify_early: bool = Field(
        True, description="a worker verifies and hashes finished ranges during the download, not after it"
    )

    @model_validator(mode="after")
    def _budget_below_timeout(self) -> JobLimits:
        if self.budget >= self.timeout:
            raise ValueError(f"budget ({self.budget}) must be below timeout ({self.timeout})")
        return self


class Distributed(BaseModel):
    """What only distributed mode reads (``RANGEFETCH_DISTRIBUTED__*``): the queue, the cluster's caps, the jobs.

    Producers and workers of one cluster should agree on ``queue_name``; the
    caps and ``per_host_rate`` are the workers' (each enforces them for the
    whole cluster through Redis); ``jobs`` holds the range jobs' limits.
    """

    model_config = ConfigDict(frozen=True)

    queue_name: str = DEFAULT_QUEUE
    per_host_connections: int = Field(16, ge=1, description="cluster-wide connection cap per host")
    per_host_rate: Rate = Field(0, ge=0, description="bytes/s the whole cluster may take from one host; 0: no limit")
    worker_concurrency: int = Field(8, ge=1, description="range jobs one worker process runs at once")
    cluster_size: int = Field(8, ge=1, description="worker processes expected; sizes the queue read limit")
    max_verify_retries: int = Field(3, ge=0, description="times a range that fails verification is redone")
    jobs: JobLimits = Field(default_factory=JobLimits, description="range job budget, timeouts and leases")


def _env(name: str) -> AliasChoices:
    """A field read from ``RANGEFETCH_<NAME>`` or from the standard variable ``NAME`` (any case)."""
    return AliasChoices(f"RANGEFETCH_{name}", name)


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_RETRY = RetryPolicy()
DEFAULT_LOW_SPEED = LowSpeed()
DEFAULT_JOBS = JobLimits()
DEFAULT_DISTRIBUTED = Distributed()


class Settings(BaseSettings):
    """Everything rangefetch can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="RANGEFETCH_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    connections: int = Field(16, ge=1, le=256, description="concurrent connections per download")
    chunk_size: Annotated[int | None, BeforeValidator(_size_or_none)] = Field(
        None, description="bytes per range; chosen from the file size when unset"
    )
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    retry: RetryPolicy = DEFAULT_RETRY
    # The low-speed rule (``LowSpeed``) as two flat fields, named as curl's flags.
    speed_limit: Rate = Field(
        DEFAULT_LOW_SPEED.limit, ge=0, description="bytes/s a connection must keep up over speed_time; 0: off"
    )
    speed_time: float = Field(DEFAULT_LOW_SPEED.time, gt=0, description="seconds the low-speed rule averages over")
    max_time: Annotated[float | None, BeforeValidator(_seconds_or_none)] = Field(
        None, gt=0, description="seconds `get` (or `wait`) may take in all; unset or 0: no limit"
    )
    # Rate limits (rangefetch/ratelimit.py), curl's --limit-rate: bytes/s, `500K` style; 0: none.
    limit_rate: Rate = Field(
        0, ge=0, description="bytes/s one download may take over all its connections (distributed: the whole cluster)"
    )
    read_size: Size = Field(1024 * 1024, ge=4096, description="largest socket read on the fast path")
    fast_path: bool = Field(
        True, description="http:// over rangefetch.transport (direct socket reads); False: httpx's stock transport"
    )
    checkpoint_interval: float = Field(2.0, gt=0, description="seconds between resume-record saves")
    user_agent: str = "rangefetch/0.1"
    download_dir: Path = Field(Path("."), description="where downloads land; outputs never leave it")
    redis_url: str | None = Field(None, description="Redis for distributed mode; unset means embedded")
    distributed: Distributed = Field(
        DEFAULT_DISTRIBUTED, description="distributed mode only: the queue, the cluster's caps, the workers, the jobs"
    )

    # The network path: proxies and TLS trust, as curl and aria2c users expect
    # (rangefetch/network.py applies them).  The standard variables are read
    # here, at the entry point, in either case (pydantic-settings matches
    # names case-insensitively); RANGEFETCH_* spellings work too.
    proxy: str | None = Field(None, description="one proxy for every URL; wins over the *_PROXY variables")
    http_proxy: str | None = Field(None, validation_alias=_env("HTTP_PROXY"), description="proxy for http:// URLs")
    https_proxy: str | None = Field(None, validation_alias=_env("HTTPS_PROXY"), description="proxy for https:// URLs")
    all_proxy: str | None = Field(None, validation_alias=_env("ALL_PROXY"), description="proxy for any URL")
    no_proxy: str | None = Field(
        None, validation_alias=_env("NO_PROXY"), description="hosts never proxied: a,b.example,.c,10.0.0.0/8; * = all"
    )
    ca_certificate: Path | None = Field(None, description="trust only the CAs in this PEM file (curl's --cacert)")
    ssl_cert_file: Path | None = Field(None, validation_alias=_env("SSL_CERT_FILE"), description="CA bundle file")
    ssl_cert_dir: Path | None = Field(None, validation_alias=_env("SSL_CERT_DIR"), description="CA directory")
    insecure: bool = Field(False, description="skip TLS certificate and host name verification")
    interface: str | None = Field(
        None, description="local IP address to connect from (curl's and aria2c's --interface; network.check_interface)"
    )

    @classmethod
    def defaults(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults: no ``RANGEFETCH_*`` variable, no ``.env`` file.

        What the library uses when its caller passes no settings
        (``download()``, ``Downloader``); only the entry points (the CLI, a
        worker) read ``RANGEFETCH_*`` and ``.env``, with ``Settings()``.  The
        variables every HTTP client honours (``HTTPS_PROXY``, ``NO_PROXY``,
        ``SSL_CERT_FILE``, ...) still apply, as they do in httpx.
        """
        # No variable name can hold a NUL, so this prefix matches none of them.
        return cls(_env_prefix="\0", _env_file=None, **values)

    @property
    def low_speed(self) -> LowSpeed:
        """``speed_limit`` and ``speed_time`` as one ``LowSpeed`` rule."""
        return LowSpeed(limit=self.speed_limit, time=self.speed_time)

    @field_validator("redis_url", "proxy", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "interface")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("ca_certificate", "ssl_cert_file", "ssl_cert_dir", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return value or None
