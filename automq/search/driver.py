"""Running a search: the driver behind ``automq search``.

:func:`run_search` loads the space, builds the evaluator (the one-shot estimator of a trained supernet run),
opens the search directory (:class:`~automq.search.results.SearchLog`), runs a registered strategy for the trials that
are still missing (:meth:`Strategy.run <automq.search.strategy.Strategy.run>` with the log, to which every strategy
appends each trial as it is made), and shows a live progress line. ``resume=True`` continues an interrupted search
in the same directory: its finished trials are kept and the strategy continues from them (``tune`` tells them to its
sampler, ``random`` continues its seeded sequence after them, the others skip the candidates already logged and
resume their training phase from its checkpoint in the directory).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from automq.cost import check_budgets
from automq.errors import AutomqError, SpaceError
from automq.search.refine import Refiner, refine_front
from automq.search.results import SPACE_FILE, SearchLog, pareto_trials
from automq.search.strategy import Budget, Evaluator, Strategy, create_strategy
from automq.search.trial import Trial
from automq.space.space import SearchSpace

if TYPE_CHECKING:
    import torch


class ProgressLog(SearchLog):
    """A :class:`SearchLog` that also shows trials done, feasible front size, hypervolume, elapsed time and the
    estimated time left on ``stream``.

    The total is the trials requested, or fewer when the strategy plans fewer (:meth:`plan`). On a terminal the line
    is rewritten in place (``\\r``) after every trial; otherwise (a log file) a line is written at most once a
    minute, so logs stay short but show that the search is alive.
    """

    def __init__(self, *args: Any, total: int, stream: TextIO | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total, self.stream = total, stream or sys.stderr
        self.live = self.stream.isatty()
        self.resumed = len(self.trials)
        self._last_line = -float("inf")

    def plan(self, total: int) -> None:
        super().plan(total)
        self.total = min(self.total, total)

    def append(self, trial: Trial) -> None:
        super().append(trial)
        if self.live or time.monotonic() - self._last_line >= 60.0 or len(self.trials) >= self.total:
            self._last_line = time.monotonic()
            self.stream.write(("\r" if self.live else "") + self.status() + ("\033[K" if self.live else "\n"))
            self.stream.flush()

    def status(self) -> str:
        """``37/100 trials (2 infeasible, 0 failed) | front 5 | HV 0.6123 | 0:01:12 | ETA 0:02:03``."""
        front, volume = pareto_trials(self.trials, self.objectives, self.scales)
        counts = {s: sum(t.status == s for t in self.trials) for s in ("infeasible", "failed")}
        elapsed = time.time() - self.started
        return (f"{self.run_info.get('label', self.run_info['strategy'])}: {len(self.trials)}/{self.total} trials "
                f"({counts['infeasible']} infeasible, {counts['failed']} failed) | front {len(front)} | "
                f"HV {volume:.4f} | {_clock(elapsed)} | ETA {_clock(self.seconds_left(elapsed))}")

    def seconds_left(self, elapsed: float) -> float:
        """The time the trials still missing take at this run's pace so far (a strategy that trains before it
        samples counts its training in that pace, so its first estimates are high)."""
        made = len(self.trials) - self.resumed
        return elapsed / made * max(0, self.total - len(self.trials)) if made else 0.0

    def close(self) -> None:
        """End the live line."""
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_search(
    space: SearchSpace | str | Path,
    *,
    out: str | Path,
    supernet: str | Path | None = None,
    strategy: str = "evolution",
    trials: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    options: Mapping[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    refine: bool = True,
    device: torch.device | str = "cpu",
) -> SearchLog:
    """Run (or, with ``resume``, continue) a search of ``space`` into the search directory ``out``.

    Args:
        space: a space file (or a shipped space's name) or a loaded :class:`SearchSpace`.
        out: the search directory (``trials.jsonl``, ``pareto.json``, ``run.json``, ``space.yaml``).
        supernet: a training run folder (``automq train-supernet --out``); its one-shot estimator scores the
            candidates. Not needed when ``evaluator`` is given.
        strategy: a registered strategy name (default ``evolution``, as ``automq search``); ``options`` are its
            constructor's keyword arguments, e.g. ``{"sampler": "nsga2", "workers": 2, "address": "auto"}`` for
            ``tune``.
        trials: the total number of trials of the search, resumed ones included (default: the space's
            ``search.trials``).
        seed: default: the space's ``seed``.
        resume: continue the search already in ``out``; without it, a directory holding trials is refused.
        evaluator: score candidates with this instead of a supernet (tests, benchmarks, cached tables).
        data_root: where the space's dataset lives, if not where the space file says.
        progress: show the progress line on stderr.
        device: the torch device the one-shot estimator loads the supernet and the images onto (Ray Tune trials
            move it to their own device, see the ``tune`` strategy's ``gpus_per_trial``).
        refine: at the end, re-score the trials that could be on the front on the whole validation split
            (:func:`~automq.search.refine.refine_front`; evaluators that cannot, such as cached tables, are left).

    Returns the search log, whose ``trials`` are all the trials of the search.
    """
    space = space if isinstance(space, SearchSpace) else SearchSpace.from_file(space)
    check_budgets(space)
    total = space.search.trials if trials is None else trials
    seed = space.seed if seed is None else seed
    options = dict(options or {})
    if total < 1:
        raise AutomqError(f"--trials must be at least 1, got {total}")
    method = _create(strategy, options)
    if resume:
        check_resumable(out, space)
    if evaluator is None:
        _check_device(method, device)
        evaluator = _one_shot_estimator(space, supernet, data_root, device)
    log = _open_log(out, space, strategy, options, resume, total, progress)
    log.run_info.update(label=method.label, trials_requested=total, seed=seed)
    remaining = total - len(log.trials)
    if remaining > 0:
        try:
            method.run(space, evaluator, Budget(remaining), seed=seed, log=log)
        finally:
            if isinstance(log, ProgressLog):
                log.close()
    if refine and isinstance(evaluator, Refiner):
        refine_front(log, evaluator)
    log.finish()
    return log


def _create(strategy: str, options: dict[str, Any]) -> Strategy:
    try:
        return create_strategy(strategy, **options)
    except KeyError as exc:
        raise AutomqError(f"--strategy: {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        raise AutomqError(f"strategy '{strategy}' rejected its options {options}: {exc}") from None


def _check_device(method: Strategy, device: torch.device | str) -> None:
    """Refuse a GPU estimator to a strategy that is not device-aware, before anything is loaded onto the GPU."""
    if str(device).split(":")[0] != "cpu" and not method.device_aware:
        raise AutomqError(f"strategy '{method.name}' trains or scores networks of its own and does not run on "
                          f"{device} yet; search with --device cpu")


def _one_shot_estimator(space: SearchSpace, supernet: str | Path | None, data_root: str | Path | None,
                        device: torch.device | str) -> Evaluator:
    if supernet is None:
        raise AutomqError("--supernet is required: give the folder of a trained supernet "
                          "(the --out folder of `automq train-supernet`)")
    from automq.oneshot.evaluate import OneShotEstimator

    return OneShotEstimator.from_run(supernet, space=space, data_root=data_root, device=device)


def _open_log(out: str | Path, space: SearchSpace, strategy: str, options: dict[str, Any], resume: bool,
              total: int, progress: bool) -> SearchLog:
    kwargs = dict(strategy=strategy, options=options, resume=resume)
    try:
        return ProgressLog(out, space, total=total, **kwargs) if progress else SearchLog(out, space, **kwargs)
    except FileExistsError as exc:
        raise AutomqError(str(exc)) from None


def check_resumable(out: str | Path, space: SearchSpace) -> None:
    """Refuse to resume a search directory that was searched with a different space (other decisions,
    objectives or budgets would make its trials meaningless to the sampler)."""
    saved_file = Path(out) / SPACE_FILE
    if not saved_file.is_file():
        return
    saved = SearchSpace.from_file(saved_file)
    same = (saved.decisions() == space.decisions() and saved.objectives == space.objectives
            and saved.budgets == space.budgets)
    if not same:
        raise SpaceError(f"{space.source}: differs from {saved_file}, the space the search in {out} was started "
                         "with (decisions, objectives or budgets); resume with that file, or start a new search "
                         "in another --out folder")
