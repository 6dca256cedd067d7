"""The demo record (experiments/demo_run.py) is read from what a real ``automq demo`` leaves, on the tests' tiny
space: the supernet's epochs, each search's trial counts, and one table row per test-split comparison."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from automq.cli import main
from automq.search.results import load_trials

from _spaces import SpaceFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from demo_run import demo_record, markdown, recorded  # noqa: E402
from provenance import command, machine  # noqa: E402

SPACE_CHANGES = {
    "dataset": {"val_size": 64},
    "training": {"epochs": 2, "batch_size": 32, "num_random": 1, "train_size": 128},
    "search": {"eval_size": 32, "calib_size": 32, "trials": 3},
}


@pytest.fixture(scope="module")
def demo(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    space = tiny_space(SPACE_CHANGES, folder=folder)
    assert main(["demo", str(space.source), "--out", str(folder / "run"), "--workers", "0"]) == 0
    return folder / "run"


def test_the_record_holds_what_the_demo_wrote(demo: Path) -> None:
    record = demo_record(demo)
    assert record["supernet"]["epochs"] == 2 and record["supernet"]["train_images"] == 128
    assert set(record["searches"]) == {"search-evolution", "search-uniform"}
    for name, search in record["searches"].items():
        assert search["trials"]["ok"] == len(load_trials(demo / name))
    final = json.loads((demo / "report" / "final.json").read_text())
    assert record["final"]["summary"] == final["summary"] and final["test_images"] > 0


def test_the_markdown_names_its_run_and_has_a_row_per_comparison(demo: Path) -> None:
    result = {"command": command(), "machine": machine(), "commit": "abc1234", "date": "2026-12-06 04:00 UTC",
              "load_average_before": (1.0, 1.0, 1.0), "load_average_after": (2.0, 2.0, 2.0), "setup_s": 12.0,
              "demo_s": 345.6, "wall_s": 400.0, **demo_record(demo)}
    text = markdown(result)
    assert "- wall time: 400 s" in text and "| `make demo` in all | 346 |" in text
    searched = len(load_trials(demo / "search-evolution"))
    assert "| search-evolution (evolution) | " in text and f"{searched} trials ({searched} ok)" in text
    comparisons = json.loads((demo / "report" / "final.json").read_text())["comparisons"]
    rows = [line for line in text.splitlines() if line.startswith("| evolution |")]
    assert len(rows) == len(comparisons) > 0
    assert all(row.endswith(f"| {c['verdict']} |") for row, c in zip(rows, comparisons))


def test_a_recorded_folder_names_each_steps_command_and_the_note(demo: Path) -> None:
    result = recorded(demo, "alone on the machine")
    steps = [result["supernet"]["training_wall_s"], *(s["wall_s"] for s in result["searches"].values()),
             result["final"]["wall_s"]]
    assert result["wall_s"] == pytest.approx(sum(steps))
    text = markdown(result)
    assert text.startswith(f"# The demo's steps in `{demo}`") and "alone on the machine" in text
    assert "make demo" not in text  # nothing was cloned or set up
    searched = json.loads((demo / "search-evolution" / "run.json").read_text())["command"]  # a string
    assert isinstance(searched, str) and f"| search-evolution (evolution): `{searched}` | " in text
    assert "| supernet training: `" in text
