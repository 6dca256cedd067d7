"""Real process kills: ``automq train-supernet`` and ``automq search`` run as subprocesses, are SIGKILLed in the
middle of their work (once a metrics or trial line shows that work is under way) and resumed with ``--resume``.

A resumed training run must end with the weights of an uninterrupted run, bit for bit; a search killed twice must
end with exactly the requested number of distinct trials, every one of them readable, even when the kill tore the
last line of ``trials.jsonl``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from automq.io import read_jsonl, safe_torch_load
from automq.oneshot.train import CHECKPOINT, SUPERNET, train_supernet
from automq.search.results import read_trials
from automq.space.space import SearchSpace

from _spaces import SpaceFactory

pytestmark = pytest.mark.slow

EPOCHS = 3
SPACE_CHANGES = {  # epochs of about a second and trials of about a tenth, so a kill lands in the middle of the work
    "dataset": {"val_size": 256},
    "training": {"epochs": EPOCHS, "batch_size": 32, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 256, "calib_size": 128},
}
TRIALS = 24
TORN_TRIAL = '{"number": 99, "candidate": {"width'  # the start of a trial record whose write was cut short
CLI = [sys.executable, "-m", "automq.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as conftest sets here: the same float sums
TIMEOUT_S = 120
POLL_S = 0.02


@pytest.fixture()
def space(tiny_space: SpaceFactory, tmp_path: Path) -> SearchSpace:
    return tiny_space(SPACE_CHANGES, folder=tmp_path)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``automq ARGS`` in a process group of its own, its stdout and stderr appended to ``log``."""
    with open(log, "ab") as output:
        return subprocess.Popen([*CLI, *args], stdout=output, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)


def kill_once(process: subprocess.Popen, reached: Callable[[], bool], log: Path) -> None:
    """SIGKILL ``process`` (and its group) as soon as ``reached()``; fail if it ended or stalled before."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not reached():
            assert process.poll() is None, f"ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no progress in {TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(POLL_S)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL, "it ended before it could be killed"


def run_to_end(args: list[str], log: Path) -> str:
    """``automq ARGS`` to its end; returns what it printed (stdout and stderr)."""
    log_start = log.stat().st_size if log.exists() else 0
    process = start(args, log)
    try:
        assert process.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        stop(process)
    return log.read_bytes()[log_start:].decode("utf-8")


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` unless it has ended (a failing test leaves no process behind)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)


def count_records(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path))


def test_training_killed_during_an_epoch_resumes_to_the_uninterrupted_weights(space: SearchSpace,
                                                                            tmp_path: Path) -> None:
    train_supernet(space, tmp_path / "straight", progress=False)
    out, log = tmp_path / "killed", tmp_path / "train.log"
    command = ["train-supernet", str(space.source), "--out", str(out)]
    kill_once(start(command, log), lambda: count_records(out / "metrics.jsonl") >= 1, log)
    assert not (out / SUPERNET).exists() and safe_torch_load(out / CHECKPOINT)["epoch"] < EPOCHS, "killed too late"

    run_to_end([*command, "--resume"], log)
    straight, resumed = (safe_torch_load(path / SUPERNET)["state_dict"] for path in (tmp_path / "straight", out))
    assert straight.keys() == resumed.keys()
    assert [name for name in straight if not torch.equal(straight[name], resumed[name])] == []
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, EPOCHS + 1))


def test_search_killed_twice_ends_with_the_requested_distinct_trials(space: SearchSpace, tmp_path: Path) -> None:
    supernet, out, log = tmp_path / "supernet", tmp_path / "search", tmp_path / "search.log"
    train_supernet(space, supernet, epochs=1, train_subset=128, progress=False)
    trials_file = out / "trials.jsonl"
    command = ["search", str(space.source), "--supernet", str(supernet), "--out", str(out), "--strategy", "tune",
               "--workers", "0", "--trials", str(TRIALS)]
    kill_once(start(command, log), lambda: count_records(trials_file) >= 4, log)
    first = count_records(trials_file)
    kill_once(start([*command, "--resume"], log), lambda: count_records(trials_file) >= first + 4, log)
    second = count_records(trials_file)
    assert 4 <= first < second < TRIALS, "killed too late"
    with open(trials_file, "a") as handle:  # as if the kill had come in the middle of writing a trial
        handle.write(TORN_TRIAL)

    printed = run_to_end([*command, "--resume"], log)
    trials, unreadable = read_trials(out)
    assert unreadable == 0 and len(trials_file.read_text().splitlines()) == TRIALS
    assert [t.number for t in trials] == list(range(TRIALS))
    assert len({t.candidate for t in trials}) == TRIALS
    assert f"{TRIALS} trials in {out}/trials.jsonl" in printed
    repaired = [line for line in printed.splitlines() if "cut off its torn last line" in line]
    assert repaired == [f"automq.io: {trials_file}: cut off its torn last line ({len(TORN_TRIAL)} bytes of a record "
                        "whose write was interrupted); the records before it are kept"]
