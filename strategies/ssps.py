"""SSPS: sequential single-path search of architecture and formats under cost constraints.

**Single-path search cell.** Every step runs ONE sampled path through the shared supernet weights (one format
per operand of every layer, one kernel and expansion per block, one depth per stage, one width), so memory stays
that of training one subnet. Sampling is Gumbel-softmax straight-through, and the chosen choice's sample (1 in
value) gates the output where the choice acts, which makes the loss differentiable in the selection
probabilities (see :mod:`strategies._relaxed`). The constraints (BitOps, size, ... budgets) are loss terms:
``penalty_weight * max(0, E[cost] / budget - 1)`` per constrained metric, with the exact expected cost of
:class:`~strategies._archparams.ExpectedCost`. Weights and logits alternate on two parts of the train split, as
in :class:`~strategies.differentiable.BilevelSearch`.

**Sequential decisions.** After a warm-up, at every fixing point the ONE undecided decision whose selection is
most certain is fixed to its top choice and its other choices removed from the distribution for good (the
sequential rule); by default there is one fixing point per decision, spread evenly over the steps after the
warm-up, so the search fixes every decision this way and re-trains the rest of the distribution in between.
``decisions_per_fixing=None`` restores the project's earlier variant: at each of ``fixings`` points an even share
``ceil(undecided / points left)`` is fixed, so that many decisions are taken at once from one snapshot of the
distribution (closer to DNAS with a hinge penalty than to a sequential search).

The *certainty* of a decision (:meth:`~strategies._archparams.ArchParams.certainty`) is how far its top
probability is from uniform over its alive choices, ``(p_max - 1/n) / (1 - 1/n)``: 0 for a uniform
distribution, 1 for a one-hot one, comparable across decisions with different numbers of choices ``n``. A
decision is fixed before the end only when its certainty reaches ``threshold`` (default 0: the most certain one
always is). Fixing a stage's depth also fixes the decisions of the blocks it leaves out (they no longer matter,
``inactive``). Decisions still undecided at the last step (too few steps for one fixing point each, or none as
certain as ``threshold``) are fixed to their top choice and marked ``forced``. The order, step and certainty of
every fixing are returned in ``Trial.info["decisions"]`` and, with ``out_dir``, written to ``ssps_decisions.json``.

One search runs per budget level; each gives one candidate, repaired into its budget if the argmax breaks it
(:func:`~strategies.differentiable.repair`) and scored by the shared estimator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from automq.io import atomic_write_json
from automq.strategies._archparams import ArchParams, ExpectedCost
from automq.strategies.differentiable import (
    BilevelSearch,
    GradientConfig,
    GradientStrategy,
    Objective,
    additive_limits,
    decode,
    score,
)
from automq.search.strategy import Evaluator, TrialRecorder, register_strategy

if TYPE_CHECKING:
    from automq.space.space import SearchSpace

DECISIONS_FILE = "ssps_decisions.json"


class SequentialFixer:
    """Fixes the decisions of ``arch`` at fixing points, most certain first, and logs each fixing.

    Args:
        arch: the distributions whose choices are removed (its ``alive`` mask only ever loses entries).
        steps: steps of the whole search; the fixing points lie before the last one.
        warmup: steps before the first fixing.
        interval: steps between fixings.
        threshold: least certainty for a decision to be fixed before the end.
        decisions_per_fixing: decisions fixed at each point (1: the sequential rule); ``None`` fixes an even share
            of the undecided ones, so that every decision is fixed by the last point.
        log: the record of the fixings made so far, which this fixer appends to (default: a new one).
    """

    def __init__(self, arch: ArchParams, *, steps: int, warmup: int, interval: int, threshold: float,
                 decisions_per_fixing: int | None = 1, log: list[dict[str, Any]] | None = None) -> None:
        self.arch, self.steps, self.warmup, self.interval, self.threshold = arch, steps, warmup, interval, threshold
        self.decisions_per_fixing = decisions_per_fixing
        self.log: list[dict[str, Any]] = [] if log is None else log

    def __call__(self, step: int) -> None:
        """After ``step`` steps: at a fixing point, fix the most certain undecided decision(s)."""
        if step < self.warmup or step >= self.steps or (step - self.warmup) % self.interval:
            return
        self.fix_most_certain(step, self.decisions_per_fixing or self._even_share(step))

    def _even_share(self, step: int) -> int:
        points_left = (self.steps - 1 - step) // self.interval + 1  # this one included
        return math.ceil(self.undecided() / points_left)

    def undecided(self) -> int:
        return int((~self.arch.fixed).sum())

    @torch.no_grad()
    def fix_most_certain(self, step: int, count: int) -> None:
        """Fix up to ``count`` undecided decisions whose certainty reaches the threshold, most certain first."""
        certainty = self.arch.certainty()
        order = torch.argsort(certainty.masked_fill(self.arch.fixed, -1.0), descending=True, stable=True)
        for row in order[:count].tolist():
            if self.arch.fixed[row]:  # fixed meanwhile, as a block that a fixed depth left out
                continue
            if float(certainty[row]) < self.threshold:
                break
            self._fix(row, step, float(certainty[row]), "certain")

    @torch.no_grad()
    def fix_remaining(self, step: int) -> None:
        certainty = self.arch.certainty()
        for row in torch.nonzero(~self.arch.fixed).flatten().tolist():
            if not self.arch.fixed[row]:  # not left out meanwhile by a depth fixed earlier in this loop
                self._fix(row, step, float(certainty[row]), "forced")

    def _fix(self, row: int, step: int, certainty: float, reason: str) -> None:
        table = self.arch.table
        choice = int(self.arch.logits()[row].argmax())
        self.arch.fix(row, choice)
        value = table.value(row, choice)
        self.log.append({"order": len(self.log), "step": step, "decision": table.names[row], "value": value,
                         "certainty": certainty, "reason": reason})
        name = table.names[row]
        if name.endswith(".depth"):  # "stages.{i}.depth": blocks at or beyond the depth no longer matter
            stage = int(name.split(".")[1])
            max_depth = table.space.network.stages[stage].max_depth
            dropped = tuple(f"blocks.{stage}.{j}." for j in range(value, max_depth))
            for other, other_name in enumerate(table.names):
                if other_name.startswith(dropped) and not self.arch.fixed[other]:
                    self._fix(other, step, float(self.arch.certainty()[other]), "inactive")


@register_strategy
class SSPS(GradientStrategy):
    """Sequential single-path search; one search, hence one candidate, per budget level.

    Args:
        levels: budget levels on ``metric``, one search each; default: the space's budget on ``metric``, or
            none (then only the space's other budgets constrain the search).
        penalty_weight: weight of each budget's hinge term.
        warmup: fraction of the steps before the first fixing.
        fixings: number of fixing points after the warm-up (the interval follows from the steps); default: one
            per decision of the space.
        threshold: least certainty for a decision to be fixed before the last step (see the module docstring).
        decisions_per_fixing: decisions fixed at each point: 1 (the sequential rule) or ``None`` (an even share
            of the undecided ones, every decision fixed by the last point: the project's earlier variant).
        metric: the metric of ``levels`` (an additive metric; default: the space's first minimised one).
        out_dir: where to write ``ssps_decisions.json`` (optional).
        search: :class:`~strategies.differentiable.GradientConfig` fields (steps, batch_size, ...); the
            relaxation is always single-path.
    """

    name = "ssps"

    def __init__(self, *, levels: Sequence[float] | None = None, penalty_weight: float = 5.0, warmup: float = 0.2,
                 fixings: int | None = None, threshold: float = 0.0, decisions_per_fixing: int | None = 1,
                 metric: str | None = None, out_dir: str | Path | None = None, **search: Any) -> None:
        if search.get("relaxation", "single_path") != "single_path":
            raise ValueError("SSPS is single-path by definition; use the 'dnas' strategy for multi-branch mixing")
        super().__init__(metric=metric, config=GradientConfig(**search))
        if penalty_weight < 0 or not 0 <= warmup < 1 or not 0 <= threshold <= 1:
            raise ValueError("SSPS needs penalty_weight >= 0, 0 <= warmup < 1 and 0 <= threshold <= 1; "
                             f"got {penalty_weight}, {warmup}, {threshold}")
        if (fixings is not None and fixings < 1) or (decisions_per_fixing is not None and decisions_per_fixing < 1):
            raise ValueError("SSPS needs fixings and decisions_per_fixing >= 1 (or None for their defaults); "
                             f"got {fixings} and {decisions_per_fixing}")
        self.levels, self.penalty_weight, self.warmup = levels, penalty_weight, warmup
        self.fixings, self.threshold, self.decisions_per_fixing = fixings, threshold, decisions_per_fixing
        self.out_dir = None if out_dir is None else Path(out_dir)

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        table, metric, expected, _ = self.setup(space)
        levels = list(self.levels) if self.levels else [space.budgets.get(metric)]
        recorder.plan(len(levels))
        logs = {}
        for index, level in enumerate(levels):
            if recorder.exhausted():
                break
            limits = additive_limits(space, None if level is None else {metric: level})
            costs = {m: expected if m == metric else ExpectedCost(table, m) for m in limits}
            checkpoint = self.checkpoint(recorder, f"search_{index}", seed=seed, level=level,
                                         penalty_weight=self.penalty_weight, warmup=self.warmup, fixings=self.fixings,
                                         threshold=self.threshold, decisions_per_fixing=self.decisions_per_fixing)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                arch = ArchParams(table)
                search = BilevelSearch(evaluator, arch, self.config, seed=seed, strategy=self.name,
                                       checkpoint=checkpoint)
                # the fixings so far live in the search's saved state, so that a resumed search continues them
                fixer = self._fixer(arch, log=search.extra.setdefault("decisions", []))
                summary = search.run(self._objective(costs, limits), after_step=fixer, deadline=recorder.deadline)
                fixer.fix_remaining(search.step_count)
            candidate, info = decode(arch, limits)
            logs[str(level)] = fixer.log
            if self.out_dir is not None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.out_dir / DECISIONS_FILE, {"metric": metric, "levels": logs})
            score(candidate, {"level": level, **summary, **info, "decisions": fixer.log}, evaluator, recorder)

    def _fixer(self, arch: ArchParams, *, log: list[dict[str, Any]]) -> SequentialFixer:
        steps = self.config.steps
        warmup = min(steps - 1, round(self.warmup * steps))
        fixings = self.fixings or len(arch.table.names)
        interval = max(1, (steps - warmup) // fixings)
        return SequentialFixer(arch, steps=steps, warmup=max(1, warmup), interval=interval, threshold=self.threshold,
                               decisions_per_fixing=self.decisions_per_fixing, log=log)

    def _objective(self, costs: dict[str, ExpectedCost], limits: dict[str, float]) -> Objective:
        """Cross-entropy plus a hinge per constrained metric."""
        def objective(ce: Tensor, arch: ArchParams, eta: float | None) -> Tensor:
            probs = arch.probs()
            hinges = sum((torch.relu(costs[m](probs) / limits[m] - 1) for m in limits),
                         torch.zeros((), dtype=torch.float64))
            return ce + self.penalty_weight * hinges.float()

        return objective

