"""Output names: network-supplied names are reduced to plain file names and confined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rangefetch import UnsafePathError, UsageError, resolve_output
from rangefetch.names import DEFAULT_NAME, filename_from_disposition, filename_from_url, safe_name

# --- safe_name --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("a/b\\c", "c"),
        ("bad\x00na\x1fme\x7f.txt", "badname.txt"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("  spaced.txt  ", "spaced.txt"),
        (".hidden", "hidden"),
        ("trailing.", "trailing"),
        ("€ rates.csv", "€ rates.csv"),
        ("", None),
        (None, None),
        ("..", None),
        ("...", None),
        ("dir/", None),
        ("\x00\x01", None),
        (" . ", None),
        # C1 controls: CSI (U+009B) starts a terminal sequence as ESC [ does; NEL (U+0085) breaks lines.
        ("a\u009b31mb\u0085.txt", "a31mb.txt"),
        ("\u0080\u009f", None),
        # Bidirectional controls: "invoice\u202etxt.exe" shows as "invoiceexe.txt".
        ("invoice\u202etxt.exe", "invoicetxt.exe"),
        ("\u2066x\u2069\u200e\u200f\u061c\u202a\u202b\u202c\u202d.txt", "x.txt"),
        ("line\u2028para\u2029.txt", "linepara.txt"),
        ("café ﷺ ✓.txt", "café ﷺ ✓.txt"),  # everything else is kept
    ],
)
def test_safe_name(name: str | None, expected: str | None) -> None:
    assert safe_name(name) == expected


def test_safe_name_is_cut_to_a_length_the_filesystem_takes_with_suffixes() -> None:
    name = safe_name("é" * 300)
    assert name is not None and name == "é" * len(name)  # cut on a character boundary
    assert len((name + ".part.json.tmp").encode()) <= 255


# --- Content-Disposition (RFC 6266) ------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ("attachment; filename=plain.bin", "plain.bin"),
        ('inline; filename="a b.txt"', "a b.txt"),
        ("attachment; filename*=UTF-8''%E2%82%AC%20rates.csv", "€ rates.csv"),
        # filename* wins over filename, in either order (RFC 6266 §4.3).
        ("attachment; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC.txt", "€.txt"),
        ("attachment; filename*=UTF-8''%E2%82%AC.txt; filename=\"fallback.txt\"", "€.txt"),
        ("attachment; filename*=UTF-8''..; filename=\"fallback.txt\"", "fallback.txt"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ("attachment; filename*=UTF-8''..%2F..%2F.bashrc", "bashrc"),
        ('attachment; filename="..\\\\..\\\\evil.exe"', "evil.exe"),
        ('attachment; filename="a\x01b\x1f.txt"', "ab.txt"),
        ("attachment; filename*=UTF-8''evil%E2%80%AEtxt.exe%C2%9B", "eviltxt.exe"),
        ("attachment; filename*0=\"foo.\"; filename*1=\"html\"", "foo.html"),
        ("attachment", None),
        ('attachment; filename=""', None),
        ('attachment; filename=".."', None),
        ("", None),
        (None, None),
        ("garbage;;;=", None),
    ],
)
def test_filename_from_disposition(value: str | None, expected: str | None) -> None:
    assert filename_from_disposition(value) == expected


# --- URL path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/files/data.tar.gz", "data.tar.gz"),
        ("https://example.com/files/data.bin?sig=abc#frag", "data.bin"),
        ("https://example.com/a/b%20c.txt", "b c.txt"),
        ("https://example.com/a/..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("https://example.com/a/..%5C..%5Cx.exe", "x.exe"),
        ("https://example.com/dir/", "dir"),
        ("https://example.com/", None),
        ("https://example.com", None),
        ("https://example.com/%2e%2e", None),
        ("https://example.com/%00", None),
    ],
)
def test_filename_from_url(url: str, expected: str | None) -> None:
    assert filename_from_url(url) == expected


# --- resolve_output -------------------------------------------------------------------


def test_output_relative_to_the_directory(tmp_path: Path) -> None:
    assert resolve_output(tmp_path, "out.bin") == tmp_path.resolve() / "out.bin"
    assert resolve_output(tmp_path, Path("sub/out.bin")) == tmp_path.resolve() / "sub" / "out.bin"


def test_first_usable_candidate_wins(tmp_path: Path) -> None:
    got = resolve_output(tmp_path, None, candidates=(None, "..", "../x/from-url.bin", "later.bin"))
    assert got == tmp_path.resolve() / "from-url.bin"


def test_default_name_without_candidates(tmp_path: Path) -> None:
    assert resolve_output(tmp_path, None) == tmp_path.resolve() / DEFAULT_NAME
    assert resolve_output(tmp_path, "", candidates=(None, "")) == tmp_path.resolve() / DEFAULT_NAME


@pytest.mark.parametrize("output", ["../escape.bin", "sub/../../escape.bin", "/etc/passwd"])
def test_confined_output_cannot_escape(tmp_path: Path, output: str) -> None:
    base = tmp_path / "dl"
    base.mkdir()
    with pytest.raises(UnsafePathError) as info:
        resolve_output(base, output)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_unconfined_output_may_leave_the_directory(tmp_path: Path) -> None:
    base = tmp_path / "dl"
    base.mkdir()
    assert resolve_output(base, "../out.bin", confine=False) == tmp_path.resolve() / "out.bin"


def test_symlink_inside_the_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    base, outside = tmp_path / "dl", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    os.symlink(outside, base / "link")
    os.symlink(outside / "victim.txt", base / "victim.txt")  # dangling, still outside
    with pytest.raises(UnsafePathError):
        resolve_output(base, "link/file.bin")
    with pytest.raises(UnsafePathError):
        resolve_output(base, "victim.txt")
    with pytest.raises(UnsafePathError):
        resolve_output(base, None, candidates=("victim.txt",))
    assert not (outside / "victim.txt").exists()


def test_symlink_inside_pointing_inside_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert resolve_output(tmp_path, "alias/f.bin") == tmp_path.resolve() / "real" / "f.bin"


def test_directory_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(UnsafePathError, match="directory"):
        resolve_output(tmp_path, "sub")
    with pytest.raises(UnsafePathError, match="directory"):
        resolve_output(tmp_path, ".")
    with pytest.raises(UnsafePathError, match="directory"):
        resolve_output(tmp_path, None, candidates=("sub",))


@pytest.mark.parametrize("output", ["newdir/", "newdir/.", "sub/newdir/", "/abs/dir/", "."])
def test_output_ending_in_a_slash_names_a_directory(tmp_path: Path, output: str) -> None:
    with pytest.raises(UnsafePathError, match="names a directory") as info:
        resolve_output(tmp_path, output, confine=False)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_output_name_leaves_room_for_the_longest_suffix(tmp_path: Path) -> None:
    assert resolve_output(tmp_path, "n" * 241) == tmp_path.resolve() / ("n" * 241)
    with pytest.raises(UsageError, match=r"is 242 bytes long: at most 241 bytes, to leave room for '.part.json.tmp'"):
        resolve_output(tmp_path, "n" * 242)
    with pytest.raises(UsageError, match="is 246 bytes long"):  # bytes, not characters
        resolve_output(tmp_path, "é" * 123)


def test_a_directory_name_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is 256 bytes long: at most 255 bytes"):
        resolve_output(tmp_path, "d" * 256 + "/f.bin")


def test_a_path_too_long_is_refused(tmp_path: Path) -> None:
    deep = "/".join(["d" * 200] * 21) + "/f.bin"  # each name fine, 4200 bytes in all
    with pytest.raises(UsageError, match="output path is too long"):
        resolve_output(tmp_path, deep)


def test_a_directory_too_long_is_refused_for_server_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at most 255 bytes"):
        resolve_output(tmp_path / ("d" * 256), None, candidates=("f.bin",))


def test_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(UsageError, match="cannot be used"):
        resolve_output(tmp_path, "a/f.bin")
