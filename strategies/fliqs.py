"""FLIQS: one-shot search of integer and floating-point formats (and architecture) by REINFORCE while training.

Dotzel et al., "FLIQS: One-Shot Mixed-Precision Floating-Point and Integer Quantization Search", AutoML 2024
(arXiv 2308.03290); FLIQNAS is the same search over architecture and formats jointly. The controller follows
TuNAS (Bender et al., CVPR 2020):

* **Policy.** An independent categorical distribution per decision of the space (each layer's ``w_fmt`` and
  ``a_fmt``, optionally tied into one decision; each block's kernel and expansion; each stage's depth; the
  width), held by :class:`~strategies._archparams.ArchParams` with logits starting uniform. Sampling uses the
  softmax mixed with the uniform distribution so that no choice falls below ``min_prob`` (:class:`ClampedPolicy`):
  a REINFORCE policy whose probability of a choice reaches zero never samples it again and cannot recover.
* **Warm-up.** For the first ``warmup`` fraction of the steps the policy is frozen (uniform), so every choice's
  weights and quantizer scales get trained before the policy judges them.
* **One step.** Sample a candidate, take one optimizer step of the shared weights on a training batch with it,
  and (after warm-up) measure its quality ``Q`` (top-1 accuracy) on a batch of a held-apart part of the TRAIN
  split, never the validation split the estimator scores on. With the cost ``C`` from the cost model and the
  target ``C_T``, the reward (:func:`reward`) is TuNAS's absolute reward ``Q - beta |C / C_T - 1|``, the one-sided
  ``Q - beta max(0, C / C_T - 1)``, or MnasNet's soft exponential ``Q (C / C_T)^beta`` with ``beta < 0`` (Tan et
  al., CVPR 2019). The advantage is the reward minus an exponential moving average of past rewards
  (:class:`MovingAverageBaseline`); the policy loss is ``-A log pi(sample) - w_H(t) H(pi)``.
* **Entropy schedule.** FLIQS regularises the policy entropy with a cosine schedule (FLIQS, Sec. 3, "entropy
  regularization"): the weight ``w_H`` goes from a positive value (an entropy bonus that keeps exploring) after
  warm-up to a negative one (an entropy penalty) at the last step (:func:`entropy_weight`), which drives the policy
  to a single configuration, so that the last steps train the shared weights for that configuration and the
  chosen model needs no retraining.

**The paper's setting and this project's default.** FLIQS is one-shot: the policy and the weights train together
from scratch, the policy waits out a warm-up, and the reported accuracy is the final candidate's with the weights
of that same run, without retraining. ``init="scratch"`` is that setting (a fresh supernet of the space, seeded,
trained for ``steps`` steps; the result to read is ``Trial.info["in_place"]``). The default ``init="supernet"``
continues from the evaluator's trained supernet instead, so that a short CPU run starts from weights every
strategy shares; its in-place accuracy then reflects ``steps`` more training steps than the shared estimator's
weights had, and ``Trial.metrics`` (the shared estimator) is the column to compare strategies on. A space without
decisions (one candidate) makes a run train that candidate alone with the same steps, batches and schedule: with
``init="scratch"`` the baseline that the paper's setting must beat at equal cost (``experiments/fliqs_study.py``).

**Notes on the numbers.** The entropy schedule's end points ``(0.05, -0.3)`` and ``beta = 1`` of the absolute
reward are this project's choices at its scale, not values taken from the paper. With accuracy in [0, 1],
``beta = 1`` makes a 10 % deviation from the cost target cost 0.1 accuracy, on either side (the absolute reward
also penalises undershooting, which pulls the policy toward the target rather than below it). Both were measured
against alternatives (``experiments/results/fliqs_summary.md``, 300 steps per run, paired on the same validation
images): the negative end of the entropy schedule is what decides the policy (final mean normalised entropy
0.005-0.013; an entropy weight ending at 0 left it at 0.58-0.82, and that policy's argmax lost 7.35 points at the
lowest target); ``beta = 0.25`` tied with ``beta = 1`` or missed the targets further.

The result of a run is the policy's argmax candidate. It is scored twice: as it stands (the FLIQS-trained weights,
BN recalibrated; ``Trial.info["in_place"]``) and by the shared estimator through
:func:`~automq.search.evaluate_candidate` (``Trial.metrics``), so it compares with every other strategy. One run
per cost target gives the front. The policy's entropy and choice probabilities per decision over time are written
as JSON lines to ``out_dir/fliqs_policy.jsonl``. In a search directory every run checkpoints its state there
(:mod:`strategies._checkpoint`), so a killed search resumes the run it was in and does not repeat finished ones.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from automq.cost import CostModel, cost_range
from automq.errors import BudgetError, SpaceError
from automq.oneshot.evaluate import OneShotEstimator
from automq.io import append_jsonl
from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies._assign import supernet_and_data, sweep_metric
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies.differentiable import score, split_train
from automq.search.strategy import Evaluator, Strategy, TrialRecorder, register_strategy
from automq.model.supernet import Supernet
from automq.oneshot.train import Progress, build_optimizer, build_scheduler, deterministic, endless_batches, run_epoch

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.space import SearchSpace

REWARDS = ("absolute", "one_sided", "soft_exponential")
DEFAULT_BETA = {"absolute": 1.0, "one_sided": 1.0, "soft_exponential": -0.07}  # MnasNet's -0.07
INITS = ("supernet", "scratch")
POLICY_LOG = "fliqs_policy.jsonl"


# ------------------------------------------------------------------------------------------------ reward and schedule
def reward(quality: float, cost_ratio: float, *, kind: str = "absolute", beta: float | None = None) -> float:
    """The reward of a candidate of quality ``quality`` whose cost is ``cost_ratio`` times the target.

    ``absolute`` (TuNAS): ``Q - beta |r - 1|``; ``one_sided``: ``Q - beta max(0, r - 1)``; ``soft_exponential``
    (MnasNet): ``Q r^beta`` with ``beta < 0``. ``beta=None`` takes :data:`DEFAULT_BETA` of the kind.
    """
    if kind not in REWARDS:
        raise ValueError(f"reward kind must be one of {REWARDS}, got {kind!r}")
    beta = DEFAULT_BETA[kind] if beta is None else beta
    if kind == "absolute":
        return quality - beta * abs(cost_ratio - 1.0)
    if kind == "one_sided":
        return quality - beta * max(0.0, cost_ratio - 1.0)
    return quality * cost_ratio**beta


@dataclass
class MovingAverageBaseline:
    """Exponential moving average of past rewards; the first reward starts it (so its advantage is 0)."""

    momentum: float = 0.95
    value: float | None = None

    def advantage(self, reward_value: float) -> float:
        """``reward - baseline``, then fold the reward into the baseline."""
        if self.value is None:
            self.value = reward_value
        advantage = reward_value - self.value
        self.value = self.momentum * self.value + (1.0 - self.momentum) * reward_value
        return advantage


def entropy_weight(step: int, *, warmup: int, steps: int, first: float, last: float) -> float:
    """Weight of the entropy term at ``step`` (0-based): 0 during warm-up, then a cosine from ``first`` at the
    first policy step to ``last`` at step ``steps - 1``."""
    if step < warmup:
        return 0.0
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return last + (first - last) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------ the policy
class ClampedPolicy:
    """The controller's sampling distribution: the softmax of ``arch`` mixed with the uniform distribution over
    each decision's alive choices, ``min_prob + (1 - n min_prob) p``, so every alive choice keeps at least
    ``min_prob`` (the argmax is unchanged)."""

    def __init__(self, arch: ArchParams, min_prob: float) -> None:
        widest = int(arch.alive.sum(dim=1).max()) if len(arch.alive) else 1  # a space without decisions: no menu
        if not 0.0 <= min_prob * widest < 1.0:
            raise ValueError(f"min_prob must lie in [0, 1/{widest}) for a menu of {widest} choices, got {min_prob}")
        self.arch, self.min_prob = arch, min_prob

    def probs(self) -> Tensor:
        """``[rows, width]`` sampling probabilities, 0 on removed choices and padding."""
        alive = self.arch.alive
        floor = self.min_prob + (1.0 - alive.sum(dim=1, keepdim=True) * self.min_prob) * self.arch.probs()
        return torch.where(alive, floor, torch.zeros_like(floor))

    def sample(self, generator: torch.Generator) -> list[int]:
        """One choice index per decision."""
        if not len(self.arch.alive):
            return []
        return torch.multinomial(self.probs().detach(), 1, generator=generator).squeeze(1).tolist()

    def log_prob(self, choice: Sequence[int], rows: Sequence[int]) -> Tensor:
        """Summed log-probability of ``choice`` over ``rows`` (the decisions active in the sampled candidate:
        the others did not affect the reward, so they get no credit for it)."""
        rows_t = torch.as_tensor(list(rows), dtype=torch.long)
        picked = torch.as_tensor([choice[r] for r in rows], dtype=torch.long)
        return torch.log(self.probs()[rows_t, picked]).sum()


@dataclass(frozen=True)
class FormatTie:
    """Tied formats: each layer's activation format follows its weight format (one decision per layer).

    ``follow`` maps an ``a_fmt`` row to ``(w_fmt row, a_fmt choice index of each w_fmt choice)``.
    """

    follow: dict[int, tuple[int, tuple[int, ...]]]

    @classmethod
    def build(cls, arch: ArchParams) -> FormatTie:
        """Restrict ``arch`` to the formats each layer has in both menus and take the ``a_fmt`` rows that follow
        a ``w_fmt`` row out of the policy (fixed, so they add no entropy and no log-probability)."""
        table, space, follow = arch.table, arch.table.space, {}
        for layer in space.layer_names():
            w_menu, a_menu = space.layer_menu(layer)
            shared = [f for f in w_menu if f in a_menu]
            if not shared:
                raise SpaceError(f"{space.source}: tie_formats needs a format in both menus of layer '{layer}' "
                                 f"(weights {list(w_menu)}, activations {list(a_menu)}); give the layer a shared "
                                 "format in formats.overrides or turn tie_formats off")
            w_row, a_row = table.index.get(f"{layer}.w_fmt"), table.index.get(f"{layer}.a_fmt")
            if w_row is not None:
                _keep(arch, w_row, [w_menu.index(f) for f in shared])
            if a_row is not None and w_row is not None:
                arch.fix(a_row, a_menu.index(shared[0]))
                follow[a_row] = (w_row, tuple(a_menu.index(f) if f in a_menu else -1 for f in w_menu))
            elif a_row is not None:
                _keep(arch, a_row, [a_menu.index(f) for f in shared])
        return cls(follow)

    def apply(self, choice: Sequence[int]) -> list[int]:
        """``choice`` with every following ``a_fmt`` set to its layer's ``w_fmt``."""
        tied = list(choice)
        for a_row, (w_row, index) in self.follow.items():
            tied[a_row] = index[tied[w_row]]
        return tied


def _keep(arch: ArchParams, row: int, choices: Sequence[int]) -> None:
    """Remove every choice of ``row`` but ``choices`` from ``arch``."""
    if len(choices) == 1:
        arch.fix(row, choices[0])
        return
    with torch.no_grad():
        keep = torch.zeros_like(arch.alive[row])
        keep[list(choices)] = True
        arch.alive[row] &= keep


# ------------------------------------------------------------------------------------------------ one search
@dataclass(frozen=True)
class FLIQSConfig:
    """Hyper-parameters of one FLIQS run.

    Attributes:
        steps: training steps (each one weight step; after warm-up also one policy step).
        warmup: fraction of the steps with the policy frozen at uniform.
        batch_size: training images per weight step.
        quality_batch_size: held-apart images per quality measurement.
        weight_lr: peak SGD learning rate of the shared weights (cosine decay to 0, as in supernet training).
        policy_lr: Adam learning rate of the policy logits.
        reward: one of :data:`REWARDS`.
        beta: cost weight of the reward (``None``: :data:`DEFAULT_BETA`; negative for ``soft_exponential``).
        baseline_momentum: momentum of the moving-average baseline.
        entropy_weight: ``(first, last)`` of the cosine entropy schedule; positive rewards entropy.
        min_prob: least sampling probability of every choice.
        quality_fraction: part of the train split held apart for quality measurements.
        init: ``"supernet"`` (continue from the evaluator's trained supernet) or ``"scratch"`` (the paper's
            one-shot setting: a fresh supernet trained with the policy; read ``Trial.info["in_place"]``).
        tie_formats: one format decision per layer, shared by weights and activations.
        log_every: steps between policy log records (the last step is always logged).
    """

    steps: int = 400
    warmup: float = 0.25
    batch_size: int = 64
    quality_batch_size: int = 128
    weight_lr: float = 0.01
    policy_lr: float = 0.05
    reward: str = "absolute"
    beta: float | None = None
    baseline_momentum: float = 0.95
    entropy_weight: tuple[float, float] = (0.05, -0.3)
    min_prob: float = 0.005
    quality_fraction: float = 0.2
    init: str = "supernet"
    tie_formats: bool = False
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 2 or self.batch_size < 1 or self.quality_batch_size < 1 or self.log_every < 1:
            raise ValueError("need steps >= 2 and batch_size, quality_batch_size, log_every >= 1; got "
                             f"{self.steps}, {self.batch_size}, {self.quality_batch_size}, {self.log_every}")
        if not 0 <= self.warmup < 1 or not 0 < self.quality_fraction < 1 or not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"need 0 <= warmup < 1, 0 < quality_fraction < 1 and 0 <= baseline_momentum < 1; got "
                             f"{self.warmup}, {self.quality_fraction}, {self.baseline_momentum}")
        if self.weight_lr < 0 or self.policy_lr <= 0:
            raise ValueError(f"need weight_lr >= 0 and policy_lr > 0, got {self.weight_lr} and {self.policy_lr}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        beta = self.cost_weight
        if (beta < 0) != (self.reward == "soft_exponential"):
            raise ValueError(f"beta must be negative for the soft_exponential reward and >= 0 for the others; got "
                             f"beta={beta} with reward={self.reward!r}")
        if len(self.entropy_weight) != 2:
            raise ValueError(f"entropy_weight must be (first, last), got {self.entropy_weight!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")

    @property
    def cost_weight(self) -> float:
        return DEFAULT_BETA[self.reward] if self.beta is None else self.beta

    @property
    def warmup_steps(self) -> int:
        return min(self.steps - 1, round(self.warmup * self.steps))


class FliqsSearch:
    """One FLIQS run toward one cost target, on a private copy of the evaluator's supernet (or a fresh one).

    Args:
        space: the searched space (its candidates must also be candidates of the evaluator's supernet space).
        evaluator: an estimator with ``.supernet`` and ``.data`` (:class:`~automq.oneshot.evaluate.OneShotEstimator`).
        config: the run's hyper-parameters.
        metric: the cost metric of the reward; ``target`` its target value ``C_T``.
        seed: seeds the data split, the batch order and the policy samples.
        log_path: JSON-lines file for the policy log (``None``: no log); a resumed run appends to it, so the
            records of the steps between its checkpoint and the stop appear twice.
        checkpoint: where the run saves its state at intervals and when it ends, and starts from the state it finds.
    """

    def __init__(self, space: SearchSpace, evaluator: Evaluator, config: FLIQSConfig, *, metric: str,
                 target: float, seed: int, log_path: Path | None = None,
                 checkpoint: PhaseCheckpoint | None = None) -> None:
        shared, self.data = supernet_and_data(evaluator, FLIQS.name)
        self.supernet = copy.deepcopy(shared) if config.init == "supernet" else Supernet(shared.space)
        self.supernet.train()
        self.config, self.metric, self.target, self.log_path = config, metric, target, log_path
        self.arch = ArchParams(DecisionTable(space))
        self.tie = FormatTie.build(self.arch) if config.tie_formats else FormatTie({})
        self.policy = ClampedPolicy(self.arch, config.min_prob)
        self.policy_opt = torch.optim.Adam(self.arch.parameters(), lr=config.policy_lr)
        self.baseline = MovingAverageBaseline(config.baseline_momentum)
        self.cost_model = CostModel(space)
        spec = dataclasses.replace(shared.space.training, lr=config.weight_lr, epochs=1, warmup_epochs=0)
        self.optimizer = build_optimizer(self.supernet, spec)
        self.scheduler = build_scheduler(self.optimizer, spec, config.steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count, self.loss_sum, self.checkpoint = 0, 0.0, checkpoint
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            self.load_state_dict(saved)
        # the batch streams continue after the steps done (quality batches are drawn from the warm-up's end on)
        weight_part, quality_part = split_train(self.data.train, config.quality_fraction, seed)
        self.weight_batches = itertools.islice(endless_batches(weight_part, config.batch_size, seed),
                                               self.step_count, None)
        self.quality_batches = itertools.islice(endless_batches(quality_part, config.quality_batch_size, seed + 1),
                                                max(0, self.step_count - config.warmup_steps), None)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: weights, policy, optimizers, schedule, baseline,
        generator, step and the sum of the training losses."""
        return {"step": self.step_count, "loss_sum": self.loss_sum, "supernet": self.supernet.state_dict(),
                "arch": self.arch.state_dict(), "policy_opt": self.policy_opt.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "baseline": self.baseline.value, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.arch.load_state_dict(state["arch"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.baseline.value, self.step_count, self.loss_sum = state["baseline"], state["step"], state["loss_sum"]

    def run(self, *, deadline: float | None = None, progress: bool = False) -> dict[str, Any]:
        """All ``config.steps`` steps (fewer when ``deadline``, a ``perf_counter`` time, passes); a JSON summary."""
        start = time.perf_counter()
        batches = itertools.islice(_until(self.weight_batches, deadline), self.config.steps - self.step_count)
        bar = Progress(self.config.steps - self.step_count) if progress else None
        run_epoch(self.supernet, batches, self._step, self.optimizer, self.scheduler, epoch=0,
                  first_step=self.step_count, diverged_hint="Lower weight_lr.", progress=bar)
        if self.checkpoint is not None:
            self.checkpoint.save(self.state_dict())
        return {"steps": self.step_count, "warmup_steps": self.config.warmup_steps,
                "stopped_early": self.step_count < self.config.steps, "search_s": time.perf_counter() - start,
                "train_loss": self.loss_sum / self.step_count if self.step_count else None,
                "baseline": self.baseline.value, "final_entropy": self.mean_entropy()}

    @torch.no_grad()
    def mean_entropy(self) -> float:
        """Mean normalised entropy of the decisions still open (1: uniform, 0: decided)."""
        open_rows = ~self.arch.fixed
        return float(self.arch.entropy(normalised=True)[open_rows].mean()) if bool(open_rows.any()) else 0.0

    def candidate(self) -> Candidate:
        """The policy's most probable candidate."""
        return self.arch.candidate(self.tie.apply(self.arch.argmax()))

    def evaluate_in_place(self, candidate: Candidate) -> dict[str, float]:
        """Accuracy and loss of ``candidate`` with this run's weights, BN recalibrated: no retraining."""
        estimate = OneShotEstimator(self.supernet.space, self.supernet, self.data, cache=False).estimate(candidate)
        return {"accuracy": estimate["accuracy"], "loss": estimate["loss"]}

    def _step(self, images: Tensor, labels: Tensor) -> list[float]:
        """Gradients of one weight step on a sampled candidate and, after warm-up, one policy step."""
        if self.checkpoint is not None:  # here the steps before this one are complete, optimizer steps included
            self.checkpoint.save_due(self.state_dict)
        raw = self.policy.sample(self.generator)
        candidate = self.arch.candidate(self.tie.apply(raw))
        self.supernet.set_active(candidate)
        loss = F.cross_entropy(self.supernet(images), labels)
        loss.backward()
        self.loss_sum += loss.item()
        record: dict[str, Any] = {"step": self.step_count, "train_loss": loss.item()}
        if self.step_count >= self.config.warmup_steps and raw:  # without decisions the run trains one candidate
            record.update(self._policy_step(raw, candidate))
        if self.log_path is not None and (self.step_count % self.config.log_every == 0
                                          or self.step_count == self.config.steps - 1):
            append_jsonl(self.log_path, {"target": self.target, **record, **self.snapshot()})
        self.step_count += 1
        return [loss.item()]

    def _policy_step(self, raw: list[int], candidate: Candidate) -> dict[str, float]:
        images, labels = next(self.quality_batches)
        with torch.no_grad():  # batch statistics in BN: the running ones mix every sampled candidate
            quality = (self.supernet(images).argmax(dim=1) == labels).float().mean().item()
        ratio = self.cost_model.metrics(candidate)[self.metric] / self.target
        value = reward(quality, ratio, kind=self.config.reward, beta=self.config.cost_weight)
        advantage = self.baseline.advantage(value)
        weight = entropy_weight(self.step_count, warmup=self.config.warmup_steps, steps=self.config.steps,
                                first=self.config.entropy_weight[0], last=self.config.entropy_weight[1])
        rows = self.arch.table.active_rows(candidate)
        loss = -advantage * self.policy.log_prob(raw, rows) - weight * self.arch.entropy().sum()
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.policy_opt.step()
        return {"quality": quality, "cost_ratio": ratio, "reward": value, "advantage": advantage,
                "entropy_weight": weight}

    @torch.no_grad()
    def snapshot(self) -> dict[str, Any]:
        """Per decision: normalised entropy and choice probabilities of the policy (before clamping)."""
        names, entropy, probs = self.arch.table.names, self.arch.entropy(normalised=True), self.arch.probs()
        widths = [len(d.choices) for d in self.arch.table.decisions]
        return {"entropy": {n: float(e) for n, e in zip(names, entropy)},
                "probs": {n: [round(float(p), 5) for p in row[:w]] for n, row, w in zip(names, probs, widths)}}


def _until(batches: Iterator[tuple[Tensor, Tensor]], deadline: float | None) -> Iterator[tuple[Tensor, Tensor]]:
    """``batches`` until ``deadline`` (a ``perf_counter`` time) passes."""
    for batch in batches:
        if deadline is not None and time.perf_counter() > deadline:
            return
        yield batch


# ------------------------------------------------------------------------------------------------ the strategy
@register_strategy
class FLIQS(Strategy):
    """FLIQS / FLIQNAS: one in-training REINFORCE search per cost target; see the module docstring.

    Args:
        targets: cost targets ``C_T`` on ``metric``, one run (and one trial) each; default: the space's budget on
            ``metric``, else ``min(3, trials of the search)`` levels evenly inside the space's cost range.
        metric: the cost of the reward (default: the space's first minimised additive objective, else BitOps).
        out_dir: where to write the policy log :data:`POLICY_LOG` (optional; rewritten by every search, continued by a
            resumed one).
        progress: show a progress line per run on stderr.
        config: :class:`FLIQSConfig` fields (steps, warmup, reward, beta, entropy_weight, init, ...).
    """

    name = "fliqs"

    def __init__(self, *, targets: Sequence[float] | None = None, metric: str | None = None,
                 out_dir: str | Path | None = None, progress: bool = False, **config: Any) -> None:
        if targets is not None and (not targets or min(targets) <= 0):
            raise ValueError(f"targets must be a non-empty list of positive costs, got {targets!r}")
        self.config = FLIQSConfig(**config)
        self.targets, self.metric, self.progress = targets, metric, progress
        self.out_dir = None if out_dir is None else Path(out_dir)

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        metric = self.metric or sweep_metric(space)
        targets = self.cost_targets(space, metric, recorder.total)
        recorder.plan(len(targets))
        log_path = None if self.out_dir is None else self.out_dir / POLICY_LOG
        if log_path is not None and not recorder.history:  # a resumed search keeps the runs it logged
            log_path.unlink(missing_ok=True)
        for index, target in enumerate(targets):
            if recorder.exhausted():
                break
            checkpoint = PhaseCheckpoint(recorder.state_dir, f"{self.name}_search_{index}", {
                "config": dataclasses.asdict(self.config), "metric": metric, "target": target, "seed": seed})
            with torch.random.fork_rng(devices=[]), deterministic():
                torch.manual_seed(seed)
                search = FliqsSearch(space, evaluator, self.config, metric=metric, target=target, seed=seed,
                                     log_path=log_path, checkpoint=checkpoint)
                summary = search.run(deadline=recorder.deadline, progress=self.progress)
                candidate = search.candidate()
                in_place = search.evaluate_in_place(candidate)
            achieved = search.cost_model.metrics(candidate)[metric]
            info = {"target": {metric: target}, "achieved": {metric: achieved}, "cost_ratio": achieved / target,
                    "reward": self.config.reward, "beta": self.config.cost_weight, "init": self.config.init,
                    "in_place": in_place, **summary}
            score(candidate, info, evaluator, recorder)

    def cost_targets(self, space: SearchSpace, metric: str, trials: int) -> list[float]:
        """The targets of the runs: given, the space's budget on ``metric``, or levels inside its cost range."""
        ranges = cost_range(space)
        if metric not in ranges:
            raise BudgetError(f"{space.source}: the cost model has no metric '{metric}' (available: "
                              f"{', '.join(ranges)}); 'latency' needs a latency table in the space file")
        if self.targets is not None:
            return [float(t) for t in self.targets]
        if metric in space.budgets:
            return [float(space.budgets[metric])]
        low, high = ranges[metric]
        return [float(t) for t in np.linspace(low, high, min(3, trials) + 2)[1:-1]]
