"""The resume record beside a .part file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rangefetch import Range, RemoteFile
from rangefetch.record import VERSION, ResumeRecord

REMOTE = RemoteFile(
    url="http://h/f.bin",
    final_url="http://h/f.bin",
    size=1000,
    ranges=True,
    etag='"abc"',
    last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
)


def test_fresh_record() -> None:
    record = ResumeRecord.for_remote(REMOTE, 100)
    assert (record.url, record.size, record.etag, record.last_modified) == (
        REMOTE.url,
        1000,
        '"abc"',
        REMOTE.last_modified,
    )
    assert record.chunk_size == 100 and record.done == [] and record.ranges() == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.bin.part.json"
    record = ResumeRecord.for_remote(REMOTE, 100)
    record.done.extend(["0-99", "300-399"])
    record.save(path)
    assert not path.with_name(path.name + ".tmp").exists()  # renamed into place
    assert json.loads(path.read_text())["version"] == VERSION
    loaded = ResumeRecord.load(path)
    assert loaded == record
    assert loaded is not None and loaded.ranges() == [Range(0, 99), Range(300, 399)]


def test_save_replaces_an_older_record(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    record = ResumeRecord.for_remote(REMOTE, 100)
    record.save(path)
    record.done.append("0-99")
    record.save(path)
    loaded = ResumeRecord.load(path)
    assert loaded is not None and loaded.done == ["0-99"]


def test_missing_record_is_none(tmp_path: Path) -> None:
    assert ResumeRecord.load(tmp_path / "nope.json") is None


GOOD = {"url": "u", "size": 10, "etag": '"e"', "last_modified": None, "chunk_size": 5, "done": ["0-4"]}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "\xff\xfe",
        "null",
        "1",
        '"text"',
        "[]",
        "{}",
        json.dumps({"version": VERSION}),
        json.dumps({**GOOD, "version": VERSION + 1}),
        json.dumps(GOOD),  # no version
        json.dumps({**GOOD, "version": VERSION, "extra": 1}),
        json.dumps({**GOOD, "version": VERSION, "done": ["4-0"]}),
        json.dumps({**GOOD, "version": VERSION, "done": ["zero-four"]}),
        json.dumps({**GOOD, "version": VERSION, "done": "0-4"}),
        json.dumps({**GOOD, "version": VERSION, "done": [[0, 4]]}),
        json.dumps({**GOOD, "version": VERSION, "size": "10"}),
        json.dumps({**GOOD, "version": VERSION, "size": -1}),
        json.dumps({**GOOD, "version": VERSION, "chunk_size": 0}),
        json.dumps({**GOOD, "version": VERSION, "chunk_size": 2.5}),
        json.dumps({**GOOD, "version": VERSION, "chunk_size": True}),
        json.dumps({**GOOD, "version": VERSION, "etag": 5}),
        json.dumps({**GOOD, "version": VERSION, "url": None}),
    ],
)
def test_corrupt_record_is_none(tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.json"
    path.write_text(text, encoding="latin-1")
    with caplog.at_level(logging.WARNING):
        assert ResumeRecord.load(path) is None


def test_valid_record_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**GOOD, "version": VERSION}))
    assert ResumeRecord.load(path) == ResumeRecord(**GOOD)  # type: ignore[arg-type]


def test_unreadable_record_is_none(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    assert ResumeRecord.load(tmp_path / "dir.json") is None


# --- mismatch ---------------------------------------------------------------------


def remote(**changes: object) -> RemoteFile:
    fields = {
        "url": REMOTE.url,
        "final_url": REMOTE.final_url,
        "size": REMOTE.size,
        "ranges": True,
        "etag": REMOTE.etag,
        "last_modified": REMOTE.last_modified,
        **changes,
    }
    return RemoteFile(**fields)  # type: ignore[arg-type]


def test_same_remote_matches() -> None:
    record = ResumeRecord.for_remote(REMOTE, 100)
    assert record.mismatch(REMOTE) is None
    assert record.mismatch(remote(final_url="http://mirror/f.bin")) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"size": 999}, "size changed from 1000 to 999 bytes"),
        ({"size": None}, "size changed from 1000 to None bytes"),
        ({"etag": '"xyz"'}, 'ETag changed from "abc" to "xyz"'),
        ({"etag": None}, 'ETag changed from "abc" to None'),
        ({"last_modified": "Wed, 15 Nov 2023 00:00:00 GMT"}, "Last-Modified changed"),
    ],
)
def test_mismatch_reasons(changes: dict[str, object], reason: str) -> None:
    assert reason in (ResumeRecord.for_remote(REMOTE, 100).mismatch(remote(**changes)) or "")


def test_no_validator_never_resumes() -> None:
    bare = remote(etag=None, last_modified=None)
    why = ResumeRecord.for_remote(bare, 100).mismatch(bare)
    assert why is not None and "no ETag or Last-Modified" in why


def test_last_modified_alone_is_enough() -> None:
    dated = remote(etag=None)
    assert ResumeRecord.for_remote(dated, 100).mismatch(dated) is None
