"""JSON-lines logs: a torn last line left by an interrupted write is repaired before the next append, so no
record appended after a crash is lost; the expected files are written out by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from automq.io import append_jsonl, read_jsonl

TWO_RECORDS = '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.25}\n'
THIRD = {"epoch": 3, "loss": 0.125}
THREE_RECORDS = TWO_RECORDS + '{"epoch": 3, "loss": 0.125}\n'


def append_after(path: Path, text: str | bytes, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Write ``text`` as the log's contents, append :data:`THIRD`, and return the warnings logged meanwhile."""
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="automq.io"):
        append_jsonl(path, THIRD)
    return [r.getMessage() for r in caplog.records if r.name == "automq.io"]


def test_an_intact_log_is_appended_to_without_a_word(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    assert append_after(path, TWO_RECORDS, caplog) == []
    assert path.read_text() == THREE_RECORDS


@pytest.mark.parametrize("fragment", [
    '{"epoch": 3, "lo',  # the kill came in the middle of the line
    '{"epoch": 3, "loss": 0.125',  # one character short of a record
    " ",  # a blank fragment is no record either
])
def test_a_torn_last_line_is_cut_off_and_said_so(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 fragment: str) -> None:
    path = tmp_path / "log.jsonl"
    warnings = append_after(path, TWO_RECORDS + fragment, caplog)
    assert path.read_text() == THREE_RECORDS  # before the repair the third record was glued to the fragment
    assert warnings == [f"{path}: cut off its torn last line ({len(fragment)} bytes of a record whose write was "
                        "interrupted); the records before it are kept"]
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2, 3]


def test_a_record_without_its_line_end_is_kept_and_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    warnings = append_after(path, '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.25}', caplog)
    assert path.read_text() == THREE_RECORDS
    assert warnings == [f"{path}: its last record had no line end (an interrupted write); ended the line"]


@pytest.mark.parametrize("lines_before", [0, 1])
def test_a_fragment_longer_than_one_read_back_step_is_cut_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                lines_before: int) -> None:
    path = tmp_path / "log.jsonl"
    before = '{"epoch": 1, "loss": 0.5}\n' * lines_before
    fragment = '{"note": "' + "x" * 10_000  # spans three 4096-byte steps back from the end
    append_after(path, before + fragment, caplog)
    assert path.read_text() == before + '{"epoch": 3, "loss": 0.125}\n'


@pytest.mark.parametrize("garbage", [b"\0\0\0\0", b"\xff\xfe\0"])  # what a power loss can leave at the end
def test_garbage_at_the_end_is_skipped_on_reading_and_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              garbage: bytes) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(TWO_RECORDS.encode("utf-8") + garbage)
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]
    append_after(path, TWO_RECORDS.encode("utf-8") + garbage, caplog)
    assert path.read_text() == THREE_RECORDS


def test_reading_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(TWO_RECORDS + '{"epoch": 3, "lo')
    assert list(read_jsonl(path)) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []
