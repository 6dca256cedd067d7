"""Architecture parameters: one categorical distribution per decision of a search space.

Every gradient or policy strategy (differentiable search, SSPS, REINFORCE-style controllers) describes its belief
about the best candidate the same way: logits over the choices of each decision of
:meth:`~automq.space.space.SearchSpace.decisions` (``width_mult``, ``stages.{i}.depth``, ``blocks.{i}.{j}.kernel_size``,
``blocks.{i}.{j}.expand_ratio``, ``{layer}.w_fmt``, ``{layer}.a_fmt``), independent across decisions.

* :class:`DecisionTable` lays the decisions out as rows of a padded ``[rows, width]`` table and converts between
  choice indices, one-hot tables and candidates.
* :class:`ArchParams` holds the logits (free parameters, or :class:`EtaLogits`, a small network of the cost
  weight ``eta``), a mask of removed choices (sequential fixing never revives one), and the distribution's
  verbs: probabilities, Gumbel-softmax straight-through samples, argmax, entropy, certainty, log-probability.
* :class:`ExpectedCost` is the exact expectation of an additive cost metric (BitOps, size, MACs, ...) under
  those independent distributions, differentiable in the probabilities. Each layer's cost depends only on the
  width, its own block's kernel and expansion, its formats, and (through depth) on whether its block is active,
  so ``E[cost] = sum_layers P(active) * sum_{combos} cost * prod p`` is computed from small per-layer tables
  priced by :class:`~automq.cost.CostModel` itself. For a one-hot distribution it is bit-for-bit the cost
  model's cost of that candidate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from automq.model.arch import layer_specs
from automq.cost import METRIC_KEYS, CostModel
from automq.errors import BudgetError
from automq.strategies._assign import ADDITIVE_METRICS

if TYPE_CHECKING:
    from automq.model.arch import LayerSpec
    from automq.space.candidate import Candidate
    from automq.space.space import Decision, SearchSpace

_BLOCK_LAYER = re.compile(r"blocks\.(\d+)\.(\d+)\.\w+")


@dataclass(frozen=True)
class DecisionTable:
    """The multi-choice decisions of ``space`` as rows of a table padded to the widest menu."""

    space: SearchSpace

    @cached_property
    def decisions(self) -> tuple[Decision, ...]:
        return self.space.decisions()

    @cached_property
    def index(self) -> dict[str, int]:
        """Row of every decision name."""
        return {d.name: row for row, d in enumerate(self.decisions)}

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.decisions]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.decisions), max((len(d.choices) for d in self.decisions), default=1)

    def valid(self) -> Tensor:
        """``[rows, width]`` bool: True where a choice exists (False in the padding)."""
        mask = torch.zeros(self.shape, dtype=torch.bool)
        for row, decision in enumerate(self.decisions):
            mask[row, : len(decision.choices)] = True
        return mask

    def rows_where(self, kinds: Sequence[str]) -> Tensor:
        """``[rows]`` bool: decisions whose name ends with one of ``kinds`` (e.g. ``("w_fmt", "a_fmt")``)."""
        return torch.tensor([d.name.rsplit(".", 1)[-1] in kinds for d in self.decisions], dtype=torch.bool)

    def value(self, row: int, choice: int) -> Any:
        return self.decisions[row].choices[choice]

    def candidate(self, choice: Sequence[int] | Tensor) -> Candidate:
        """The candidate of one choice index per row (decisions of inactive blocks are ignored)."""
        choice = choice.tolist() if isinstance(choice, Tensor) else choice
        return self.space.candidate_from_choices(
            {d.name: d.choices[c] for d, c in zip(self.decisions, choice, strict=True)})

    def choice_of(self, candidate: Candidate) -> list[int]:
        """Choice index per row of ``candidate``; decisions of its inactive blocks take their first choice."""
        values = self.space.choices_of(candidate)
        return [d.choices.index(values[d.name]) if d.name in values else 0 for d in self.decisions]

    def one_hot(self, candidate: Candidate) -> Tensor:
        """``[rows, width]`` float64 table with a single 1 per row at ``candidate``'s choice."""
        table = torch.zeros(self.shape, dtype=torch.float64)
        table[torch.arange(self.shape[0]), torch.tensor(self.choice_of(candidate), dtype=torch.long)] = 1.0
        return table

    def active_rows(self, candidate: Candidate) -> list[int]:
        """Rows of the decisions active in ``candidate`` (those of blocks beyond a stage's depth are not)."""
        return [self.index[name] for name in self.space.choices_of(candidate)]


    @cached_property
    def variants(self) -> dict[str, LayerVariants]:
        """Every layer's shapes as a function of the decisions that shape it (see :class:`LayerVariants`)."""
        space, names = self.space, self.names
        base = space.choices_of(space.largest())  # every block active
        specs_of: dict[tuple, dict[str, LayerSpec]] = {}

        def specs(assignment: tuple[tuple[int, int], ...]) -> dict[str, LayerSpec]:
            if assignment not in specs_of:
                arch = space.candidate_from_choices({**base, **{names[r]: self.value(r, c) for r, c in assignment}})
                specs_of[assignment] = {spec.name: spec for spec in layer_specs(space, arch)}
            return specs_of[assignment]

        variants = {}
        for layer in space.layer_names():
            rows = [self.index[n] for n in _shaping_names(layer) if n in self.index]
            combos = list(itertools.product(*(range(len(self.decisions[r].choices)) for r in rows)))
            shapes = {combo: specs(tuple(zip(rows, combo)))[layer] for combo in combos}
            # keep only the rows the layer's shape actually depends on (a kernel does not shape conv_pw)
            keep = [n for n in range(len(rows))
                    if any(len({_shape(spec) for spec in group}) > 1 for group in _along(shapes, n))]
            variants[layer] = LayerVariants(
                tuple(rows[n] for n in keep),
                {tuple(combo[n] for n in keep): spec for combo, spec in shapes.items()},
            )
        return variants


@dataclass(frozen=True)
class LayerVariants:
    """The shapes one layer takes: ``specs[combo]`` for one choice index per row of ``rows`` (the width and
    its own block's kernel and expansion, those that change its shape). Formats are the largest candidate's."""

    rows: tuple[int, ...]
    specs: dict[tuple[int, ...], LayerSpec]

    @property
    def largest(self) -> LayerSpec:
        """The shape that holds every other one (the supernet's allocation for this layer)."""
        return max(self.specs.values(), key=lambda s: (s.out_ch, s.in_ch, s.kernel_size))


def _shaping_names(layer: str) -> list[str]:
    """Decisions that can shape ``layer``: the width, and its block's kernel and expansion."""
    block = _BLOCK_LAYER.fullmatch(layer)
    if block is None:
        return ["width_mult"]
    prefix = f"blocks.{block[1]}.{block[2]}"
    return ["width_mult", f"{prefix}.kernel_size", f"{prefix}.expand_ratio"]


def _shape(spec: LayerSpec) -> tuple[int, int, int]:
    return spec.in_ch, spec.out_ch, spec.kernel_size


def _along(shapes: dict[tuple[int, ...], LayerSpec], axis: int) -> list[list[LayerSpec]]:
    """Groups of specs that differ only in the choice of ``axis``."""
    groups: dict[tuple[int, ...], list[LayerSpec]] = {}
    for combo, spec in shapes.items():
        groups.setdefault(combo[:axis] + combo[axis + 1:], []).append(spec)
    return list(groups.values())


class FreeLogits(nn.Module):
    """Plain learnable logits, zero (uniform) at the start; ``eta`` is not used."""

    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(shape))

    def forward(self, eta: float | Tensor | None = None) -> Tensor:
        return self.logits


class EtaLogits(nn.Module):
    """Logits as a function of the cost weight ``eta`` (One-Shot MPQ, CVPR 2023), of ``t = log eta`` rescaled
    to [-1, 1] over ``eta_range``: ``base + t * slope + mlp(t)``. Everything starts at zero, so every ``eta``
    starts uniform. The linear term learns the main trend (cheaper choices as ``eta`` grows) within a few
    hundred steps, which an MLP alone, whose output layer sees nearly the same features for every ``eta`` at
    first, does not; the MLP adds the bends. One run thus learns a whole family of distributions."""

    def __init__(self, shape: tuple[int, int], eta_range: tuple[float, float], *, hidden: int = 64) -> None:
        super().__init__()
        low, high = eta_range
        if not 0 < low < high:
            raise ValueError(f"eta_range must satisfy 0 < low < high, got {eta_range}")
        self.shape, self.log_range = shape, (math.log(low), math.log(high))
        self.base = nn.Parameter(torch.zeros(shape))
        self.slope = nn.Parameter(torch.zeros(shape))
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, shape[0] * shape[1]))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, eta: float | Tensor | None = None) -> Tensor:
        if eta is None:
            raise ValueError("EtaLogits needs the cost weight eta")
        low, high = self.log_range
        t = 2 * (torch.as_tensor(eta, dtype=torch.float32).log() - low) / (high - low) - 1
        return self.base + t * self.slope + self.net(t.reshape(1, 1)).reshape(self.shape)


class ArchParams(nn.Module):
    """Independent categorical distributions over the choices of every decision, with removable choices.

    Args:
        table: the decisions (rows) and their choices.
        logits: the module producing ``[rows, width]`` logits from an optional ``eta`` (default: free logits).
    """

    def __init__(self, table: DecisionTable, logits: nn.Module | None = None) -> None:
        super().__init__()
        self.table = table
        self.source = logits if logits is not None else FreeLogits(table.shape)
        self.register_buffer("alive", table.valid())

    # ------------------------------------------------------------------------------------------ distributions
    def logits(self, eta: float | Tensor | None = None) -> Tensor:
        """Logits with removed choices (and the padding) at ``-inf``."""
        return self.source(eta).masked_fill(~self.alive, float("-inf"))

    def probs(self, eta: float | Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
        return torch.softmax(self.logits(eta) / temperature, dim=1)

    def sample(self, generator: torch.Generator, eta: float | Tensor | None = None, *,
               temperature: float = 1.0) -> Tensor:
        """A Gumbel-softmax straight-through sample: one-hot rows in value, the gradient of the relaxed
        softmax at ``temperature`` in backward (Jang et al., 2017; GDAS, Dong & Yang, CVPR 2019). Used as
        mixing weights, it computes exactly the sampled candidate while every choice receives a gradient."""
        logits = self.logits(eta)
        uniform = torch.rand(logits.shape, generator=generator, device=generator.device)
        uniform = uniform.to(logits.device).clamp_(1e-10, 1 - 1e-10)
        soft = torch.softmax((logits - torch.log(-torch.log(uniform))) / temperature, dim=1)
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)
        return hard - soft.detach() + soft

    def argmax(self, eta: float | Tensor | None = None) -> list[int]:
        """The most probable alive choice of every row."""
        return self.logits(eta).argmax(dim=1).tolist()

    def entropy(self, eta: float | Tensor | None = None, *, normalised: bool = False) -> Tensor:
        """``[rows]`` entropy in nats (0 for a fixed decision); ``normalised`` divides by ``log(alive choices)``
        so that every undecided row lies in [0, 1] whatever its number of choices."""
        logits = self.logits(eta)
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log_softmax(logits, dim=1).masked_fill(~self.alive, 0.0)).sum(dim=1)
        if not normalised:
            return entropy
        return entropy / self.alive.sum(dim=1).to(entropy.dtype).log().clamp_min(1e-12)

    def certainty(self, eta: float | Tensor | None = None) -> Tensor:
        """``[rows]`` in [0, 1]: how far the top probability is from uniform over the alive choices,
        ``(p_max - 1/n) / (1 - 1/n)``; comparable across decisions with different numbers of choices, and 1
        for a fixed decision."""
        p_max = self.probs(eta).max(dim=1).values
        n = self.alive.sum(dim=1).to(p_max.dtype)
        return torch.where(n > 1, (p_max - 1 / n) / (1 - 1 / n).clamp_min(1e-12), torch.ones_like(p_max))

    def log_prob(self, choice: Sequence[int] | Tensor, eta: float | Tensor | None = None) -> Tensor:
        """Summed log-probability of one choice per row (the score of a REINFORCE policy)."""
        index = torch.as_tensor(choice, dtype=torch.long).reshape(-1, 1)
        return torch.log_softmax(self.logits(eta), dim=1).gather(1, index).sum()

    def preference(self, eta: float | Tensor | None = None) -> Tensor:
        """Log-probabilities over every valid choice, removed ones included: what the search learned about
        choices it has since fixed away, which a greedy budget repair still needs to rank its moves."""
        valid = self.table.valid().to(self.alive.device)
        return torch.log_softmax(self.source(eta).masked_fill(~valid, float("-inf")), dim=1)

    def candidate(self, choice: Sequence[int] | Tensor) -> Candidate:
        return self.table.candidate(choice)

    # ------------------------------------------------------------------------------------------ removing choices
    @property
    def fixed(self) -> Tensor:
        """``[rows]`` bool: decisions with a single alive choice."""
        return self.alive.sum(dim=1) == 1

    @torch.no_grad()
    def fix(self, row: int, choice: int) -> None:
        """Keep only ``choice`` alive in ``row``; it must be alive (a removed choice is never revived)."""
        if not bool(self.alive[row, choice]):
            raise ValueError(f"decision {self.table.names[row]!r}: choice {choice} was already removed")
        self.alive[row] = False
        self.alive[row, choice] = True


@dataclass(frozen=True)
class _LayerTerm:
    """One layer's cost table over the rows it depends on, and the rows that make its block active."""

    rows: tuple[int, ...]  # decision rows, one per table dimension
    table: Tensor  # float64, shape = number of choices of each row
    depth_row: int | None  # stages.{i}.depth, or None when the layer is always present
    active_choices: Tensor | None  # float64 [width] mask of the depth choices under which the block exists


class ExpectedCost:
    """Exact expected value of an additive cost ``metric`` when every decision is drawn independently.

    ``ExpectedCost(table, "bitops")(probs)`` is differentiable in ``probs`` (``[rows, width]``, rows summing to
    1) and returns a float64 scalar. Metrics that are maxima over layers (``peak_act``) have no such expectation
    and raise :class:`~automq.errors.BudgetError`.
    """

    def __init__(self, table: DecisionTable, metric: str, *, cost_model: CostModel | None = None) -> None:
        if metric not in ADDITIVE_METRICS:
            raise BudgetError(f"metric '{metric}' is not a per-layer sum, so gradient strategies cannot use it "
                              f"as a loss term; use one of {', '.join(ADDITIVE_METRICS)} (peak_act is a maximum "
                              "over layers: constrain it through the format menus instead)")
        self.table, self.metric = table, metric
        self.cost_model = cost_model or CostModel(table.space)
        self.terms = self._build_terms()

    def __call__(self, probs: Tensor) -> Tensor:
        probs = probs.to(torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        # Summed layer by layer in network order, as CostModel sums, so one-hot inputs match it exactly.
        for term in self.terms:
            value = term.table
            for row in reversed(term.rows):
                value = value @ probs[row, : value.shape[-1]]
            if term.depth_row is not None:
                value = value * (probs[term.depth_row] @ term.active_choices)
            total = total + value
        return total

    def _build_terms(self) -> list[_LayerTerm]:
        space, table, field = self.table.space, self.table, METRIC_KEYS[self.metric]
        terms = []
        for layer, variants in table.variants.items():
            w_menu, a_menu = space.layer_menu(layer)
            format_rows = [row for row in (table.index.get(f"{layer}.w_fmt"), table.index.get(f"{layer}.a_fmt"))
                           if row is not None]
            values = [
                float(getattr(self.cost_model.layer_cost(dataclasses.replace(variants.specs[combo], w_fmt=w, a_fmt=a)),
                              field))
                for combo in itertools.product(*(range(len(table.decisions[r].choices)) for r in variants.rows))
                for w in w_menu for a in a_menu
            ]
            rows = (*variants.rows, *format_rows)
            shape = [len(table.decisions[r].choices) for r in rows]
            terms.append(_LayerTerm(rows, torch.tensor(values, dtype=torch.float64).reshape(shape),
                                    *self._activity(_BLOCK_LAYER.fullmatch(layer))))
        return terms

    def _activity(self, block: re.Match | None) -> tuple[int | None, Tensor | None]:
        """The depth row of a block's stage and the mask of depths that include the block."""
        depth_row = self.table.index.get(f"stages.{block[1]}.depth") if block else None
        if depth_row is None:
            return None, None
        mask = torch.zeros(self.table.shape[1], dtype=torch.float64)
        depths = self.table.decisions[depth_row].choices
        mask[: len(depths)] = torch.tensor([float(d > int(block[2])) for d in depths], dtype=torch.float64)
        return depth_row, mask

