"""Differentiable search of architecture and formats: fixed-lambda DNAS/EdMIPS and the eta-conditioned front.

Both train :class:`~strategies._archparams.ArchParams` (logits for every decision: width, depths, kernels,
expansions, every layer's weight and activation format) on a private copy of the one-shot supernet, in
alternating steps (first-order DARTS; EdMIPS, Cai & Vasconcelos, CVPR 2020): the supernet weights take an SGD
step, on one sampled subnet, on one part of the train split; the logits an Adam step on the part held apart; the
validation split is never touched. The architecture loss is cross-entropy plus a differentiable expected cost
(:class:`~strategies._archparams.ExpectedCost`, exact under independent decisions) relative to a target, as
``lambda * E[cost] / target`` or the hinge ``lambda * max(0, E[cost] / target - 1)``. Choices are Gumbel-softmax
straight-through samples (temperature annealed geometrically) computed as a masked single path, or with
multi-branch format mixing, the DNAS reference (see :mod:`strategies._relaxed`).

* ``dnas``: one search per fixed ``lambda`` (and budget level) gives one candidate each: the baseline.
* ``differentiable``: One-Shot MPQ (CVPR 2023). A small network maps the cost weight ``eta`` to every
  decision's logits; each step draws ``eta`` log-uniformly from ``[eta0, eta1]`` and minimises
  :func:`eta_loss`, ``(cross-entropy + eta * E[cost] / reference - w_H * entropy) / (1 + eta)``: the entropy
  bonus keeps the softmax from saturating, and the division (which keeps every eta's gradients of similar size)
  applies to it too, so its weight relative to the task loss is ``w_H`` at every eta and each eta's minimiser is
  that of ``ce + eta * cost - w_H * H``. After this single run a sweep of ``eta`` values, one argmax candidate
  each (deduplicated), gives the candidates; only some of them are Pareto-optimal (``Trial.info`` keeps each
  one's ``eta``).

The argmax of a distribution can break a budget that its expectation met, so every decoded candidate is repaired
greedily (:func:`repair`) and its achieved cost is recorded beside its target in ``Trial.info``. Candidates are
scored by :func:`~automq.search.strategy.evaluate_candidate` with the shared estimator, like every other strategy.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

from automq.model.arch import layer_specs
from automq.cost import METRIC_KEYS, CostModel, cost_range
from automq.errors import BudgetError
from automq.strategies._archparams import ArchParams, DecisionTable, EtaLogits, ExpectedCost
from automq.strategies._assign import ADDITIVE_METRICS, supernet_and_data, sweep_metric
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies._relaxed import FORMAT_KINDS, RELAXATIONS, RelaxedSupernet
from automq.search.strategy import Evaluator, Strategy, TrialRecorder, register_strategy
from automq.oneshot.train import GRAD_CLIP_NORM, endless_batches

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.space import SearchSpace

Objective = Callable[[Tensor, ArchParams, "float | None"], Tensor]  # (cross-entropy, arch, eta) -> arch loss
PENALTY_FORMS = ("ratio", "hinge")


@dataclass(frozen=True)
class GradientConfig:
    """Hyper-parameters of the bilevel search shared by the gradient strategies.

    Attributes:
        steps: alternating (weight step, architecture step) pairs.
        batch_size: images per step.
        weight_lr: SGD learning rate of the supernet copy's weights (0 freezes them).
        arch_lr: Adam learning rate of the architecture parameters.
        temperature: Gumbel-softmax temperature at the first and the last step (geometric in between).
        arch_fraction: part of the train split held apart for the architecture steps.
        relaxation: ``"single_path"`` or ``"multi_branch"`` (formats mixed; much more memory and compute).
    """

    steps: int = 300
    batch_size: int = 64
    weight_lr: float = 0.002
    arch_lr: float = 0.05
    temperature: tuple[float, float] = (5.0, 0.5)
    arch_fraction: float = 0.5
    relaxation: str = "single_path"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.weight_lr < 0 or self.arch_lr <= 0:
            raise ValueError(f"need weight_lr >= 0 and arch_lr > 0, got {self.weight_lr} and {self.arch_lr}")
        if len(self.temperature) != 2 or min(self.temperature) <= 0:
            raise ValueError(f"temperature must be (first, last), both > 0, got {self.temperature}")
        if not 0 < self.arch_fraction < 1:
            raise ValueError(f"arch_fraction must lie in (0, 1), got {self.arch_fraction}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")


# ------------------------------------------------------------------------------------------------ data
def split_train(dataset: Dataset, arch_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded split of the train split into (weight part, architecture part)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = len(dataset) - max(1, round(arch_fraction * len(dataset)))
    if cut < 1:
        raise ValueError(f"the train split ({len(dataset)} images) is too small to hold part of it apart")
    parts = order[:cut], order[cut:]
    if isinstance(dataset, TensorDataset):  # keep the fast batched path of make_loader
        return tuple(TensorDataset(*(t[torch.from_numpy(idx)] for t in dataset.tensors)) for idx in parts)
    return Subset(dataset, parts[0].tolist()), Subset(dataset, parts[1].tolist())


# ------------------------------------------------------------------------------------------------ the search
class BilevelSearch:
    """Alternating weight and architecture steps on a private copy of the evaluator's supernet.

    The evaluator's own supernet is left untouched, so every candidate is scored with the same weights as the
    candidates of every other strategy. With a ``checkpoint``, the search starts from the state saved there (if
    any) and saves its state there at intervals and when it stops, so that a killed search continues to the result
    of an uninterrupted one. ``rng`` (the caller's own draws, e.g. ``eta``) and ``extra`` (JSON-able records of
    the caller, e.g. SSPS's fixings) are saved with it.
    """

    def __init__(self, evaluator: Evaluator, arch: ArchParams, config: GradientConfig, *, seed: int,
                 strategy: str, checkpoint: PhaseCheckpoint | None = None) -> None:
        supernet, data = supernet_and_data(evaluator, strategy)
        self.supernet = copy.deepcopy(supernet).train()
        self.arch, self.config, self.seed, self.checkpoint = arch, config, seed, checkpoint
        self.model = RelaxedSupernet(self.supernet, arch.table, relaxation=config.relaxation)
        self.parts = split_train(data.train, config.arch_fraction, seed)
        self.weight_opt = torch.optim.SGD(self.supernet.parameters(), lr=config.weight_lr, momentum=0.9,
                                          nesterov=True) if config.weight_lr > 0 else None
        self.arch_opt = torch.optim.Adam(arch.parameters(), lr=config.arch_lr, betas=(0.5, 0.999))
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.extra: dict[str, Any] = {}
        self.last: dict[str, float] = {}
        self.device = next(self.supernet.parameters()).device
        self.step_count = 0
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            self.load_state_dict(saved)
        self._batches_from(self.step_count)

    def _batches_from(self, step: int) -> None:
        """The weight and architecture batch streams, positioned after ``step`` steps."""
        weight_part, arch_part = self.parts
        weight_steps = step if self.weight_opt is not None else 0
        self.weight_batches = itertools.islice(endless_batches(weight_part, self.config.batch_size, self.seed),
                                               weight_steps, None)
        self.arch_batches = itertools.islice(endless_batches(arch_part, self.config.batch_size, self.seed + 1),
                                             step, None)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed search needs to continue exactly: weights, architecture parameters, optimizers,
        generators, step and the caller's ``extra``."""
        return {"step": self.step_count, "supernet": self.supernet.state_dict(), "arch": self.arch.state_dict(),
                "weight_opt": None if self.weight_opt is None else self.weight_opt.state_dict(),
                "arch_opt": self.arch_opt.state_dict(), "generator": self.generator.get_state(),
                "rng": self.rng.bit_generator.state, "extra": self.extra, "last": self.last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.arch.load_state_dict(state["arch"])
        if self.weight_opt is not None:
            self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.extra, self.last, self.step_count = dict(state["extra"]), dict(state["last"]), state["step"]

    def temperature(self) -> float:
        first, last = self.config.temperature
        return first * (last / first) ** (self.step_count / max(1, self.config.steps - 1))

    def choice_weights(self, eta: float | None = None) -> Tensor:
        """Straight-through one-hot samples; format probabilities on the rows a multi-branch relaxation mixes."""
        sample = self.arch.sample(self.generator, eta, temperature=self.temperature())
        return torch.where(self.model.mixed_rows[:, None], self.arch.probs(eta), sample)

    def step(self, objective: Objective, eta: float | None = None) -> dict[str, float]:
        """One weight step (when ``weight_lr > 0``) and one architecture step; returns their losses."""
        losses = {}
        if self.weight_opt is not None:
            # The weights train on one sampled subnet, computed plainly: no choice needs a gradient here.
            images, labels = (t.to(self.device) for t in next(self.weight_batches))
            with torch.no_grad():
                choice = self.arch.sample(self.generator, eta, temperature=self.temperature()).argmax(dim=1)
            self.supernet.set_active(self.arch.candidate(choice))
            loss = F.cross_entropy(self.supernet(images), labels)
            self.weight_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.supernet.parameters(), GRAD_CLIP_NORM)
            self.weight_opt.step()
            losses["weight_ce"] = loss.item()
        images, labels = (t.to(self.device) for t in next(self.arch_batches))
        ce = F.cross_entropy(self.model(images, self.choice_weights(eta)), labels)
        loss = objective(ce, self.arch, eta)
        # Gradients for the architecture parameters only: the weights are not trained on this part of the data.
        params = list(self.arch.parameters())
        for param, grad in zip(params, torch.autograd.grad(loss, params)):
            param.grad = grad
        self.arch_opt.step()
        self.step_count += 1
        return {**losses, "arch_ce": ce.item(), "arch_loss": loss.item()}

    def run(self, objective: Objective, *, eta: Callable[[], float] | None = None,
            after_step: Callable[[int], None] | None = None, deadline: float | None = None) -> dict[str, Any]:
        """All ``config.steps`` steps (fewer when ``deadline``, a ``perf_counter`` time, passes); ``eta`` draws
        each step's cost weight and ``after_step(step)`` runs after each. Returns a JSON summary."""
        start = time.perf_counter()
        while self.step_count < self.config.steps:
            if deadline is not None and time.perf_counter() > deadline:
                break
            self.last = self.step(objective, eta() if eta is not None else None)
            if after_step is not None:
                after_step(self.step_count)
            if self.checkpoint is not None:
                self.checkpoint.save_due(self.state_dict)
        if self.checkpoint is not None:
            self.checkpoint.save(self.state_dict())
        return {"search_steps": self.step_count, "search_s": time.perf_counter() - start,
                "stopped_early": self.step_count < self.config.steps,
                **{f"final_{k}": v for k, v in self.last.items()}}


def cost_objective(expected: ExpectedCost, target: float, weight: float, form: str) -> Objective:
    """Cross-entropy plus ``weight * E[cost] / target`` (``"ratio"``) or ``weight * max(0, E[cost] / target - 1)``
    (``"hinge"``)."""
    if form not in PENALTY_FORMS:
        raise ValueError(f"penalty form must be one of {PENALTY_FORMS}, got {form!r}")

    def objective(ce: Tensor, arch: ArchParams, eta: float | None) -> Tensor:
        ratio = expected(arch.probs(eta)) / target
        return ce + weight * (ratio if form == "ratio" else torch.relu(ratio - 1)).float()

    return objective


# ------------------------------------------------------------------------------------------------ budgets
def additive_limits(space: SearchSpace, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """The space's hard budgets, tightened by ``extra``; gradient strategies only handle per-layer sums."""
    limits = dict(space.budgets)
    for metric, value in (extra or {}).items():
        limits[metric] = min(value, limits.get(metric, value))
    unsupported = sorted(set(limits) - set(ADDITIVE_METRICS))
    if unsupported:
        raise BudgetError(f"{space.source}: budgets on {unsupported} are not per-layer sums, which gradient "
                          f"strategies need (supported: {', '.join(ADDITIVE_METRICS)}); remove those budgets or "
                          "use another strategy")
    return limits


def _excess(costs: Mapping[str, float], limits: Mapping[str, float]) -> float:
    return sum(max(0.0, costs[m] / limits[m] - 1.0) for m in limits)


def repair(arch: ArchParams, candidate: Candidate, limits: Mapping[str, float], *, eta: float | None = None,
           cost_model: CostModel | None = None) -> tuple[Candidate, list[dict[str, Any]]]:
    """Greedily bring ``candidate`` within ``limits``: each move changes one decision to the choice with the
    best ratio of budget excess removed to preference lost (``log p(current) - log p(new)`` under ``arch`` at
    ``eta``). Format moves (lowering a layer's precision) are tried first; architecture moves only when no
    format move helps. Returns the candidate (still over budget only if nothing helps) and the moves made."""
    table = arch.table
    cost_model = cost_model or CostModel(table.space)
    preference = arch.preference(eta).detach().double()
    formats = table.rows_where(FORMAT_KINDS).tolist()
    choice, moves = table.choice_of(candidate), []
    while (excess := _excess(costs := cost_model.metrics(candidate), limits)) > 0:
        rows = table.active_rows(candidate)
        best = _best_move(arch, candidate, choice, [r for r in rows if formats[r]], costs, limits, preference,
                          cost_model) or _best_move(arch, candidate, choice, [r for r in rows if not formats[r]],
                                                    costs, limits, preference, cost_model)
        if best is None:
            break
        row, new = best
        moves.append({"decision": table.names[row], "from": table.value(row, choice[row]),
                      "to": table.value(row, new), "excess_before": excess})
        choice[row] = new
        candidate = table.candidate(choice)
    return candidate, moves


def _best_move(arch: ArchParams, candidate: Candidate, choice: list[int], rows: Sequence[int],
               costs: Mapping[str, float], limits: Mapping[str, float], preference: Tensor,
               cost_model: CostModel) -> tuple[int, int] | None:
    """The ``(row, choice)`` with the best excess-removed per preference-lost ratio among ``rows``."""
    table, excess = arch.table, _excess(costs, limits)
    specs = {spec.name: spec for spec in layer_specs(table.space, candidate)}
    best, best_ratio = None, 0.0
    for row in rows:
        name = table.names[row]
        for new in range(len(table.decisions[row].choices)):
            if new == choice[row]:
                continue
            if name.endswith(FORMAT_KINDS):  # additive metrics: the layer's cost change is exact
                new_costs = _with_format(costs, specs, name, table.value(row, new), cost_model, limits)
            else:
                new_costs = cost_model.metrics(table.candidate([new if r == row else c for r, c in enumerate(choice)]))
            gain = excess - _excess(new_costs, limits)
            lost = max(float(preference[row, choice[row]] - preference[row, new]), 1e-6)
            if gain > 0 and gain / lost > best_ratio:
                best, best_ratio = (row, new), gain / lost
    return best


def _with_format(costs: Mapping[str, float], specs: Mapping[str, Any], decision: str, value: str,
                 cost_model: CostModel, limits: Mapping[str, float]) -> dict[str, float]:
    layer, kind = decision.rsplit(".", 1)
    spec = specs[layer]
    old, new = cost_model.layer_cost(spec), cost_model.layer_cost(dataclasses.replace(spec, **{kind: value}))
    return {m: costs[m] + getattr(new, METRIC_KEYS[m]) - getattr(old, METRIC_KEYS[m]) for m in limits}


def decode(arch: ArchParams, limits: Mapping[str, float], *, eta: float | None = None,
           cost_model: CostModel | None = None) -> tuple[Candidate, dict[str, Any]]:
    """The argmax candidate of ``arch`` (at ``eta``), repaired into ``limits``, and its ``Trial.info`` record:
    targets, achieved costs, repair moves."""
    cost_model = cost_model or CostModel(arch.table.space)
    argmax = arch.candidate(arch.argmax(eta))
    candidate, moves = repair(arch, argmax, limits, eta=eta, cost_model=cost_model)
    return candidate, {"target": dict(limits), "achieved": cost_model.metrics(candidate), "argmax_id": argmax.id,
                       "repair": moves}


def score(candidate: Candidate, info: Mapping[str, Any], evaluator: Evaluator, recorder: TrialRecorder) -> None:
    """Score and record a decoded candidate with the shared estimator, unless the search already has it (another
    search or ``eta`` decoded it, or it was logged before a resume)."""
    if not recorder.seen(candidate):
        recorder.evaluate(candidate, evaluator, info=info)


class GradientStrategy(Strategy):
    """What the gradient strategies share: the search configuration, the cost metric and its reference."""

    def __init__(self, *, metric: str | None, config: GradientConfig) -> None:
        if metric is not None and metric not in ADDITIVE_METRICS:
            raise ValueError(f"metric must be one of {ADDITIVE_METRICS} (a per-layer sum), got {metric!r}")
        self.metric, self.config = metric, config

    def setup(self, space: SearchSpace) -> tuple[DecisionTable, str, ExpectedCost, float]:
        """The decision table, the cost metric, its expectation and its reference (the largest candidate's)."""
        table = DecisionTable(space)
        metric = self.metric or sweep_metric(space)
        return table, metric, ExpectedCost(table, metric), cost_range(space)[metric][1]

    def checkpoint(self, recorder: TrialRecorder, search: str, *, seed: int, **settings: Any) -> PhaseCheckpoint:
        """The checkpoint of one of this strategy's searches (``search`` names it) in the search directory; its
        configuration is the search settings, the seed and ``settings``."""
        config = {"search": dataclasses.asdict(self.config), "metric": self.metric, "seed": seed, **settings}
        return PhaseCheckpoint(recorder.state_dir, f"{self.name}_{search}", config)


@register_strategy
class DNAS(GradientStrategy):
    """Fixed-lambda differentiable search (DNAS/EdMIPS): one search, hence one candidate, per lambda and level.

    Args:
        lambdas: cost weights, one search each.
        levels: budget levels on ``metric``, one search each (with every lambda); default: the space's budget
            on ``metric``, or none. A level is the target of the penalty and a hard limit of the repair.
        penalty: ``"ratio"`` (``lambda * E[cost] / target``; without a level the target is the largest
            candidate's cost) or ``"hinge"`` (``lambda * max(0, E[cost] / level - 1)``; needs a level).
        metric: the cost in the loss (an additive metric; default: the space's first minimised one).
        search: :class:`GradientConfig` fields (steps, batch_size, relaxation, ...).
    """

    name = "dnas"

    def __init__(self, *, lambdas: Sequence[float] = (1.0,), levels: Sequence[float] | None = None,
                 penalty: str = "ratio", metric: str | None = None, **search: Any) -> None:
        super().__init__(metric=metric, config=GradientConfig(**search))
        if penalty not in PENALTY_FORMS:
            raise ValueError(f"penalty must be one of {PENALTY_FORMS}, got {penalty!r}")
        if not lambdas or min(lambdas) < 0:
            raise ValueError(f"lambdas must be a non-empty list of weights >= 0, got {list(lambdas)}")
        self.lambdas, self.levels, self.penalty = tuple(lambdas), levels, penalty

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        table, metric, expected, reference = self.setup(space)
        levels = list(self.levels) if self.levels else [space.budgets.get(metric)]
        if self.penalty == "hinge" and None in levels:
            raise BudgetError(f"{space.source}: the hinge penalty needs a budget on {metric}: add budgets.{metric} "
                              "to the space file, pass levels=[...], or use penalty='ratio'")
        recorder.plan(len(levels) * len(self.lambdas))
        for index, (level, lam) in enumerate(itertools.product(levels, self.lambdas)):
            if recorder.exhausted():
                break
            limits = additive_limits(space, None if level is None else {metric: level})
            checkpoint = self.checkpoint(recorder, f"search_{index}", seed=seed, level=level, lam=lam,
                                         penalty=self.penalty)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                arch = ArchParams(table)
                search = BilevelSearch(evaluator, arch, self.config, seed=seed, strategy=self.name,
                                       checkpoint=checkpoint)
                summary = search.run(cost_objective(expected, level or reference, lam, self.penalty),
                                     deadline=recorder.deadline)
            candidate, info = decode(arch, limits)
            score(candidate, {"lambda": lam, "level": level, **summary, **info}, evaluator, recorder)


def eta_loss(ce: Tensor, cost: Tensor, entropy: Tensor, eta: float, entropy_weight: float) -> Tensor:
    """The eta-conditioned architecture loss ``(ce + eta * cost - entropy_weight * entropy) / (1 + eta)``.

    Divided by ``1 + eta`` so that every eta contributes gradients of similar size (without it the largest etas
    dominate Adam's normalisation of the shared parameters and the accuracy side of the front never forms). The
    entropy bonus is divided too: left outside, its weight relative to the task loss would grow with ``1 + eta``
    (11x across the default eta range) and change each eta's minimiser."""
    return (ce + eta * cost - entropy_weight * entropy) / (1 + eta)


@register_strategy
class Differentiable(GradientStrategy):
    """eta-conditioned differentiable search (One-Shot MPQ): one run, a front of ``sweep`` argmax candidates.

    Args:
        eta_range: ``(eta0, eta1)``, the cost weights drawn (log-uniformly) during the run and swept after it.
        sweep: number of log-spaced ``eta`` values decoded after the run (duplicates are scored once).
        entropy_weight: weight of the mean normalised entropy bonus relative to the cross-entropy (see
            :func:`eta_loss`).
        hidden: width of the eta-to-logits network.
        metric: the cost in the loss (an additive metric; default: the space's first minimised one).
        search: :class:`GradientConfig` fields (steps, batch_size, relaxation, ...).
    """

    name = "differentiable"

    def __init__(self, *, eta_range: tuple[float, float] = (0.01, 10.0), sweep: int = 24,
                 entropy_weight: float = 0.01, hidden: int = 64, metric: str | None = None, **search: Any) -> None:
        super().__init__(metric=metric, config=GradientConfig(**search))
        if not 0 < eta_range[0] < eta_range[1]:
            raise ValueError(f"eta_range must satisfy 0 < eta0 < eta1, got {eta_range}")
        if sweep < 1 or entropy_weight < 0:
            raise ValueError(f"need sweep >= 1 and entropy_weight >= 0, got {sweep} and {entropy_weight}")
        self.eta_range, self.sweep, self.entropy_weight, self.hidden = tuple(eta_range), sweep, entropy_weight, hidden

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        table, metric, expected, reference = self.setup(space)
        limits = additive_limits(space)
        log_low, log_high = np.log(self.eta_range)

        def objective(ce: Tensor, arch: ArchParams, eta: float | None) -> Tensor:
            cost = expected(arch.probs(eta)).float() / reference
            return eta_loss(ce, cost, arch.entropy(eta, normalised=True).mean(), eta, self.entropy_weight)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            arch = ArchParams(table, EtaLogits(table.shape, self.eta_range, hidden=self.hidden))
            checkpoint = self.checkpoint(recorder, "search", seed=seed, eta_range=self.eta_range, hidden=self.hidden,
                                         entropy_weight=self.entropy_weight)
            search = BilevelSearch(evaluator, arch, self.config, seed=seed, strategy=self.name, checkpoint=checkpoint)
            summary = search.run(objective, eta=lambda: float(np.exp(search.rng.uniform(log_low, log_high))),
                                 deadline=recorder.deadline)
        decoded = []
        with torch.no_grad():
            for eta in np.geomspace(*self.eta_range, self.sweep):
                candidate, info = decode(arch, limits, eta=float(eta))
                expected_cost = float(expected(arch.probs(float(eta))))
                decoded.append((candidate, {"eta": float(eta), f"expected_{metric}": expected_cost, **summary, **info}))
        recorder.plan(len({candidate.id for candidate, _ in decoded}))
        for candidate, info in decoded:
            if recorder.exhausted():
                break
            score(candidate, info, evaluator, recorder)
