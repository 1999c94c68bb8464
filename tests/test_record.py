"""The resume record beside a .part file."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from rangefetch import Range, RemoteFile
from rangefetch.record import VERSION, ResumeRecord, digest_url

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
    assert record.is_for(REMOTE.url) and not record.is_for("http://h/other.bin")


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


GOOD = {
    "url": "u", "url_digest": digest_url("u"), "size": 10, "etag": '"e"', "last_modified": None, "chunk_size": 5,
    "done": ["0-4"],
}  # fmt: skip


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
        json.dumps({**GOOD, "version": VERSION, "url_digest": None}),
        json.dumps({**GOOD, "version": VERSION, "url_digest": "no-salt"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "url_digest"} | {"version": VERSION}),
        json.dumps({**GOOD, "version": 1, "url": None}),
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


def test_another_url_does_not_match() -> None:
    record = ResumeRecord.for_remote(remote(url="https://u:pw@h/f.bin?token=t1"), 100)
    assert record.mismatch(remote(url="https://u:pw@h/f.bin?token=t1")) is None
    why = record.mismatch(remote(url="https://u:pw@h/other.bin?token=t1"))
    assert why is not None and "URL is not the one recorded" in why
    assert "t1" not in why and "pw" not in why  # the reason is logged: only the redacted URL


def test_fresh_credentials_or_signature_still_resume() -> None:
    # A presigned URL signed again, or a new password: the same file (size and
    # validators pin it), so the download resumes; the digest tells them apart.
    record = ResumeRecord.for_remote(remote(url="https://u:pw@h/f.bin?X-Amz-Signature=aaa&token=t1"), 100)
    fresh = "https://u:pw2@h/f.bin?X-Amz-Signature=bbb&token=t2"
    assert record.mismatch(remote(url=fresh)) is None
    assert not record.is_for(fresh)


# --- no secrets on disk -----------------------------------------------------------

SECRET_URL = "https://alice:hunter2@h/f.bin?token=SECRET-TOKEN&part=1"


def test_record_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "f.bin.part.json"
    record = ResumeRecord.for_remote(remote(url=SECRET_URL), 100)
    record.save(path)
    text = path.read_text()
    assert "hunter2" not in text and "SECRET-TOKEN" not in text
    data = json.loads(text)
    assert data["url"] == "https://alice:REDACTED@h/f.bin?token=REDACTED&part=1"
    loaded = ResumeRecord.load(path)
    assert loaded is not None and loaded.is_for(SECRET_URL) and loaded.mismatch(remote(url=SECRET_URL)) is None


def test_digests_are_salted() -> None:
    one, two = digest_url(SECRET_URL), digest_url(SECRET_URL)
    assert one != two  # a fresh salt each time: no table of digests made in advance helps
    salt = one.partition(":")[0]
    assert digest_url(SECRET_URL, salt) == one and digest_url(SECRET_URL + "x", salt) != one


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_record_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "f.bin.part.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("left over by a crash")
    tmp.chmod(0o666)
    old = os.umask(umask)
    try:
        ResumeRecord.for_remote(REMOTE, 100).save(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    path.chmod(0o644)  # written by an older rangefetch
    ResumeRecord.for_remote(REMOTE, 100).save(path)
    assert mode(path) == 0o600


def test_loading_makes_an_old_record_private(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**GOOD, "version": VERSION}))
    path.chmod(0o644)
    assert ResumeRecord.load(path) is not None
    assert mode(path) == 0o600


def test_version_1_record_loads_without_its_secret(tmp_path: Path) -> None:
    # Version 1 kept the full URL: it still resumes, and the next save forgets the URL.
    path = tmp_path / "f.bin.part.json"
    old = {k: v for k, v in GOOD.items() if k != "url_digest"} | {"url": SECRET_URL, "version": 1}
    path.write_text(json.dumps(old))
    loaded = ResumeRecord.load(path)
    assert loaded is not None and loaded.done == ["0-4"]
    assert "hunter2" not in loaded.url and loaded.is_for(SECRET_URL)
    loaded.save(path)
    assert "hunter2" not in path.read_text() and "SECRET-TOKEN" not in path.read_text()
    assert json.loads(path.read_text())["version"] == VERSION


def test_record_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({**GOOD, "version": VERSION}))
    target.chmod(0o644)
    link = tmp_path / "f.bin.part.json"
    link.symlink_to(target)
    assert ResumeRecord.load(link) is None
    assert mode(target) == 0o644  # untouched


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
