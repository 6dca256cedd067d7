"""The search directory: what every strategy writes, what resume reads back, what reports load.

Layout of ``SEARCH_DIR``::

    run.json       strategy, options, command, space file, timings (rewritten atomically as the run goes)
    space.yaml     a copy of the space file the run used
    trials.jsonl   one line per finished trial, appended and fsynced as each one ends (never rewritten)
    pareto.json    the feasible Pareto set with hypervolume (rewritten atomically after each trial)

A crash loses no finished trial: ``trials.jsonl`` is append-only, and a torn last line is skipped on reading and
cut off before a resumed search appends (:func:`automq.io.append_jsonl`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automq.errors import AutomqError
from automq.io import append_jsonl, atomic_write_json, read_jsonl
from automq.search.pareto import Objective, loss_vectors, pareto_mask, reference_point, hypervolume
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.space.space import SearchSpace

TRIALS_FILE = "trials.jsonl"
PARETO_FILE = "pareto.json"
RUN_FILE = "run.json"
SPACE_FILE = "space.yaml"


def space_objectives(space: SearchSpace) -> list[Objective]:
    """The space file's objectives as :class:`~automq.search.pareto.Objective` values."""
    return [Objective(o.metric, o.mode) for o in space.objectives]


def hypervolume_scales(space: SearchSpace) -> dict[str, float]:
    """Per-metric normalisers for hypervolume: the largest candidate's cost (see :mod:`automq.search.pareto`)."""
    from automq.cost import cost_range

    return {metric: high for metric, (_, high) in cost_range(space).items() if high > 0}


def pareto_trials(
    trials: Sequence[Trial], objectives: Sequence[Objective], scales: Mapping[str, float]
) -> tuple[list[Trial], float]:
    """The feasible non-dominated trials (sorted by the first cost objective) and their hypervolume."""
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return [], 0.0
    losses = loss_vectors([t.metrics for t in feasible], objectives, scales)
    front = [t for t, on in zip(feasible, pareto_mask(losses)) if on]
    volume = hypervolume(losses, reference_point(objectives))
    cost_metric = next((o.metric for o in objectives if o.mode == "min"), objectives[0].metric)
    front.sort(key=lambda t: t.metrics[cost_metric])
    return front, volume


class SearchLog:
    """Writer for one search directory; with ``resume=True`` it reloads the finished trials first."""

    def __init__(
        self,
        out_dir: str | Path,
        space: SearchSpace,
        *,
        strategy: str,
        options: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.dir = Path(out_dir)
        self.space = space
        self.objectives = space_objectives(space)
        self.scales = hypervolume_scales(space)
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = load_trials(self.dir)
        if previous and not resume:
            raise FileExistsError(
                f"{self.dir} already holds {len(previous)} trials; pass --resume to continue that search, "
                "or choose another --out folder"
            )
        self.trials: list[Trial] = previous
        self.started = time.time()
        self.run_info: dict[str, Any] = {
            "strategy": strategy,
            "options": dict(options or {}),
            "space": str(space.path) if space.path else space.name,
            "command": " ".join(sys.argv),
            "started": self.started,
            "resumed_with_trials": len(previous),
            "status": "running",
        }
        if resume:  # the trials on disk carry an earlier refinement's shifts: its record (probes, counts) goes on
            self.run_info.update({key: value for key, value in read_run(self.dir).items() if key == "refine"})
        if space.path and not (self.dir / SPACE_FILE).exists():
            shutil.copyfile(space.path, self.dir / SPACE_FILE)
        self._write_run()

    def append(self, trial: Trial) -> None:
        """Record a finished trial durably, then refresh the Pareto file."""
        append_jsonl(self.dir / TRIALS_FILE, trial.to_dict())
        self.trials.append(trial)
        self.write_pareto()

    def plan(self, total: int) -> None:
        """Record in ``run.json`` how many trials the search will have in all, when its strategy knows it is fewer
        than requested (``uniform``: one per format pair)."""
        self.run_info["trials_planned"] = total
        self._write_run()

    def write_pareto(self) -> float:
        front, volume = pareto_trials(self.trials, self.objectives, self.scales)
        atomic_write_json(
            self.dir / PARETO_FILE,
            {
                "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
                "hypervolume": volume,
                "hypervolume_scales": self.scales,
                "reference_point": reference_point(self.objectives).tolist(),
                "trials": [t.to_dict() for t in front],
            },
        )
        return volume

    def finish(self, **extra: Any) -> None:
        """Mark the run finished, with wall time and trial counts by status."""
        counts = {s: sum(t.status == s for t in self.trials) for s in ("ok", "infeasible", "failed")}
        self.run_info.update(
            status="finished", finished=time.time(), wall_s=time.time() - self.started, trials=counts, **extra
        )
        self._write_run()

    def _write_run(self) -> None:
        atomic_write_json(self.dir / RUN_FILE, self.run_info)


def load_trials(search_dir: str | Path) -> list[Trial]:
    """Every finished trial of a search directory (empty when there is none); see :func:`read_trials`."""
    return read_trials(search_dir)[0]


def read_trials(search_dir: str | Path) -> tuple[list[Trial], int]:
    """The readable trials of a search directory and how many records were skipped as torn or malformed."""
    path = Path(search_dir) / TRIALS_FILE
    trials: list[Trial] = []
    lines = 0
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            lines = sum(1 for line in handle if line.strip())
    for record in read_jsonl(path):
        try:
            trials.append(Trial.from_dict(record))
        except (KeyError, TypeError, ValueError, AutomqError):
            continue
    return trials, lines - len(trials)


@dataclass
class SearchResult:
    """What a report needs from one search directory; ``notes`` says what was missing or damaged."""

    path: Path
    run: dict[str, Any]
    trials: list[Trial]
    notes: list[str] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return str(self.run.get("label") or self.run.get("strategy") or self.path.name)


def read_run(path: Path) -> dict[str, Any]:
    """The ``run.json`` an earlier run left in ``path``; empty when there is none or it is unreadable."""
    try:
        run = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return run if isinstance(run, dict) else {}


def load_search_dir(search_dir: str | Path) -> SearchResult:
    """Load a search directory tolerantly: a missing or half-written file becomes a note, not a crash."""
    path = Path(search_dir)
    notes: list[str] = []
    run: dict[str, Any] = {}
    if not path.is_dir():
        return SearchResult(path, run, [], [f"{path}: no such search directory"])
    try:
        run = json.loads((path / RUN_FILE).read_text())
    except FileNotFoundError:
        notes.append(f"{path / RUN_FILE} is missing: strategy and timings unknown")
    except json.JSONDecodeError as exc:
        notes.append(f"{path / RUN_FILE} is not valid JSON ({exc}); ignored")
    trials, skipped = read_trials(path)
    if skipped:
        notes.append(f"{path / TRIALS_FILE}: skipped {skipped} torn or malformed record(s)")
    if not trials:
        notes.append(f"{path / TRIALS_FILE} holds no finished trial")
    if run.get("status") == "running":
        notes.append(f"{path}: the run did not finish (status 'running'); showing the {len(trials)} trials it saved")
    return SearchResult(path, run, trials, notes)
