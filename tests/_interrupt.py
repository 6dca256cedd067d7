"""An in-process stand-in for a kill, and the check that a search resumed after it ends as an uninterrupted one.

Tests of the training-phase checkpoints patch a strategy module's ``endless_batches`` with :func:`interrupted_after`,
run the phase until it stops, and check that a second run continues from the checkpoint to the result of an
uninterrupted one (:func:`interrupted_and_resumed` does this for a whole search through its search directory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import automq.strategies._checkpoint
from automq.search.results import SearchLog, load_trials
from automq.search.strategy import Budget, Evaluator, Strategy
from automq.search.trial import Trial


def interrupted_after(batches: int, source: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``source`` (an ``endless_batches``), except that the streams it makes raise ``KeyboardInterrupt``, as Ctrl-C
    would, when asked for their ``batches + 1``-th batch in all (counted over every stream together)."""
    served = itertools.count()

    def interrupted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for batch in source(*args, **kwargs):
            if next(served) == batches:
                raise KeyboardInterrupt
            yield batch

    return interrupted


class Calls:
    """``function`` that counts its calls (``count``) and, with ``stop``, raises ``KeyboardInterrupt`` instead of
    making call number ``stop + 1``."""

    def __init__(self, function: Callable[..., Any], stop: int | None = None) -> None:
        self.function, self.stop, self.count = function, stop, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.count == self.stop:
            raise KeyboardInterrupt
        self.count += 1
        return self.function(*args, **kwargs)


def interrupted_and_resumed(make: Callable[[], Strategy], evaluator: Evaluator, trials: int, module: ModuleType,
                            batches: int, folder: Path, monkeypatch: pytest.MonkeyPatch, *,
                            step: tuple[type, str]) -> tuple[list[Trial], list[Trial], int]:
    """A search of ``trials`` trials by ``make()`` run without a stop, and the same search stopped when ``module``'s
    training phase asks for batch ``batches + 1`` and then resumed in its directory (checkpoints are saved after
    every step): the trials of both, and how often the resumed run called the training step ``step``, a
    ``(class, method name)``."""
    monkeypatch.setattr(automq.strategies._checkpoint, "CHECKPOINT_EVERY_S", 0.0)
    space = evaluator.space

    def search(name: str, *, resume: bool = False) -> None:
        log = SearchLog(folder / name, space, strategy=make().name, resume=resume)
        make().run(space, evaluator, Budget(trials - len(log.trials)), seed=0, log=log)

    search("whole")
    with monkeypatch.context() as patch:
        patch.setattr(module, "endless_batches", interrupted_after(batches, module.endless_batches))
        with pytest.raises(KeyboardInterrupt):
            search("resumed")
    owner, name = step
    calls = Calls(getattr(owner, name))
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, lambda *args, **kwargs: calls(*args, **kwargs))  # a method: bind self
        search("resumed", resume=True)
    return load_trials(folder / "whole"), load_trials(folder / "resumed"), calls.count


def outcome(trial: Trial) -> tuple[Any, ...]:
    """What a resumed search must reproduce of a trial: all but the timings (``info`` keys ending in ``_s``)."""
    info = {key: value for key, value in trial.info.items() if not key.endswith("_s")}
    return trial.number, trial.candidate.id, trial.status, trial.metrics, info
