"""The one exception tree: every error is a RangefetchError with a one-line message."""

from __future__ import annotations

import asyncio
import pickle

import pytest

import rangefetch
from rangefetch import errors
from rangefetch.errors import (
    ConnectionLostError,
    DownloadError,
    HTTPStatusError,
    PermanentError,
    ProtocolError,
    RangefetchError,
    RemoteChangedError,
    RetriesExhaustedError,
    ServerBusyError,
    TransientError,
    UnsafePathError,
    UsageError,
    VerificationError,
    collapse,
    leaves,
)
from rangefetch.plan import Range

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__ if name != "collapse"]


def make(cls: type[RangefetchError], message: str = "boom", **kwargs: object) -> RangefetchError:
    if cls in (HTTPStatusError, ServerBusyError):
        kwargs.setdefault("status", 503 if cls is ServerBusyError else 404)
    return cls(message, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_ours_and_exported(cls: type[RangefetchError]) -> None:
    assert issubclass(cls, RangefetchError)
    assert getattr(rangefetch, cls.__name__) is cls
    assert cls.__doc__ and "\n" not in cls.__doc__.strip()  # a one-line docstring
    assert cls.__name__ in (errors.__doc__ or "")  # listed in the tree


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_messages_are_one_line_and_carry_url_and_range(cls: type[RangefetchError]) -> None:
    exc = make(cls, "first line\n  second\tline\r\n", url="http://h/f", range=Range(0, 9))
    assert str(exc) == exc.message == "first line second line"
    assert exc.args == ("first line second line",)
    assert exc.url == "http://h/f" and exc.range == Range(0, 9)
    plain = make(cls)
    assert plain.url is None and plain.range is None


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_survive_pickling(cls: type[RangefetchError]) -> None:
    # arq pickles the errors that range jobs raise.
    exc = make(cls, url="http://h/f", range=Range(5, 6))
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert (str(back), back.url, back.range) == ("boom", "http://h/f", Range(5, 6))
    assert vars(back) == vars(exc)


def test_exit_codes() -> None:
    for cls in ERROR_CLASSES:
        expected = 2 if issubclass(cls, UsageError) else 1
        assert cls.exit_code == expected, cls
    assert UnsafePathError.exit_code == 2


def test_tree() -> None:
    assert issubclass(UnsafePathError, UsageError)
    Classes = list[type[RangefetchError]]
    transient: Classes = [ConnectionLostError, errors.StallError, ServerBusyError]
    permanent: Classes = [HTTPStatusError, ProtocolError, RemoteChangedError, errors.UnknownSizeError]
    neither: Classes = [RetriesExhaustedError, VerificationError, errors.CancelledDownloadError]
    assert all(issubclass(cls, TransientError) for cls in transient)
    assert all(issubclass(cls, PermanentError) for cls in permanent)
    assert all(issubclass(cls, DownloadError) for cls in transient + permanent + neither)
    assert not any(issubclass(cls, TransientError | PermanentError) for cls in neither)
    assert not issubclass(errors.StateError, DownloadError)
    assert not issubclass(errors.QueueError, DownloadError)


def test_status_and_retry_after() -> None:
    busy = ServerBusyError("busy", status=503, retry_after=2.5)
    assert (busy.status, busy.retry_after) == (503, 2.5)
    assert ConnectionLostError("x").retry_after is None
    assert HTTPStatusError("gone", status=410).status == 410


# --- collapse ----------------------------------------------------------------------


def test_collapse_prefers_a_permanent_error_and_counts_the_others() -> None:
    permanent = HTTPStatusError("HTTP 404", status=404)
    inner = ExceptionGroup("inner", [RetriesExhaustedError("gave up"), permanent])
    group = ExceptionGroup("fetch", [ConnectionLostError("dropped"), inner])
    got = collapse(group)
    assert got is permanent
    assert str(got) == "HTTP 404 (and 2 more failures)"


def test_collapse_verification_counts_as_decisive() -> None:
    verify = VerificationError("bad sha")
    assert collapse(ExceptionGroup("g", [RetriesExhaustedError("r"), verify])) is verify


def test_collapse_of_transients_takes_the_first() -> None:
    first, second = RetriesExhaustedError("one"), RetriesExhaustedError("two")
    got = collapse(ExceptionGroup("g", [first, second]))
    assert got is first and str(got) == "one (and 1 more failures)"


def test_collapse_of_a_single_error_keeps_its_message() -> None:
    only = ProtocolError("bad Content-Range")
    deep = ExceptionGroup("a", [ExceptionGroup("b", [ExceptionGroup("c", [only])])])
    got = collapse(deep)
    assert got is only and str(got) == "bad Content-Range"


def test_collapse_returns_the_group_when_a_failure_is_not_ours() -> None:
    group = ExceptionGroup("g", [ProtocolError("x"), ExceptionGroup("inner", [KeyError("bug")])])
    assert collapse(group) is group
    base = BaseExceptionGroup("g", [KeyboardInterrupt()])
    assert collapse(base) is base


def test_one_walk_of_nested_groups_serves_both_modes() -> None:
    # collapse() (embedded) and the worker's range job read the same leaves.
    inner = ExceptionGroup("inner", [ValueError("a"), KeyError("b")])
    outer = BaseExceptionGroup("outer", [inner, asyncio.CancelledError()])
    found = leaves(outer)
    assert [type(e) for e in found] == [ValueError, KeyError, asyncio.CancelledError]
    assert leaves(ValueError("x"))[0].args == ("x",)
