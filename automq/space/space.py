"""Search spaces: a validated YAML file describing elastic MobileNetV2 architectures and per-layer format menus.

A :class:`SearchSpace` is parsed from data only (a bounded ``yaml.SafeLoader``, see
:func:`automq.space.schema.read_space_file`); every mistake raises :class:`SpaceError` naming the file, the field
path (``network.stages[2].kernel_size``) and what was expected. The space exposes
its choices as flat categorical :class:`Decision` values (for Optuna, DNAS, REINFORCE, ...) and the sampling,
mutation and crossover helpers that strategies share. All of them walk the network through one generic
builder, :meth:`SearchSpace.build`, so conditional choices (blocks beyond the sampled depth) are handled once.

The full file reference is ``docs/space-files.md``.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from automq.space.candidate import BlockChoice, Candidate
from automq.errors import CandidateError, SpaceError
from automq.numerics.formats import format_names, get_format
from automq.space.schema import (
    BLOCK_LAYERS, COST_METRICS, METRICS, DatasetSpec, FormatRule, NetworkSpec, Objective, SearchSpec, StageSpec,
    TrainingSpec, did_you_mean, parse_space, read_space_file, shown, space_error,
)

__all__ = [
    "BLOCK_LAYERS", "COST_METRICS", "METRICS", "SHIPPED_SPACES", "DatasetSpec", "Decision", "FormatRule",
    "NetworkSpec", "Objective", "SearchSpace", "SearchSpec", "StageSpec", "TrainingSpec",
]



def _shipped_spaces() -> Path:
    """The folder of the shipped ``spaces/*.yaml``: the package data ``automq.spaces`` of an installed automq, else
    the source tree's ``spaces/`` (a checkout run with ``PYTHONPATH=.``, as on a machine without the package)."""
    try:
        return Path(str(importlib.resources.files("automq.spaces")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "spaces"


SHIPPED_SPACES = _shipped_spaces()

RngLike = np.random.Generator | int | None
Pick = Callable[[str, str, tuple], Any]  # (decision name, kind, choices) -> chosen value


@dataclass(frozen=True)
class Decision:
    """One categorical choice of the space, e.g. ``blocks.2.1.kernel_size`` with choices ``(3, 5)``."""

    name: str
    choices: tuple


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick_random(rng: np.random.Generator, choices: Sequence) -> Any:
    # Index rather than rng.choice, which would turn Python values into numpy scalars.
    return choices[int(rng.integers(len(choices)))]


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A validated search space; build it with :meth:`from_file` or :meth:`from_dict`."""

    name: str
    source: str
    dataset: DatasetSpec
    network: NetworkSpec
    weight_formats: tuple[str, ...]
    activation_formats: tuple[str, ...]
    overrides: tuple[FormatRule, ...]
    objectives: tuple[Objective, ...]
    budgets: dict[str, float]
    seed: int = 0
    training: TrainingSpec = TrainingSpec()
    search: SearchSpec = SearchSpec()
    latency_table: Path | None = None
    description: str = ""

    # ---------------------------------------------------------------- loading and validation
    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Load a space file; a bare name such as ``mbv2_fmnist`` also finds the shipped ``spaces/*.yaml``."""
        path = Path(path)
        shipped = SHIPPED_SPACES / f"{path.name}.yaml"
        if not path.is_file() and path.suffix == "" and shipped.is_file():
            path = shipped
        if not path.is_file():
            available = sorted(p.stem for p in SHIPPED_SPACES.glob("*.yaml"))
            raise SpaceError(f"{path}: no such space file. Give a path to a YAML file, or one of the shipped "
                             f"spaces: {', '.join(available)}")
        return cls.from_dict(read_space_file(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> SearchSpace:
        """Validate a parsed space file; ``source`` names it in error messages and anchors relative paths."""
        space = cls(**parse_space(data, source))
        space._check_overrides()
        return space

    def _check_overrides(self) -> None:
        names = self.layer_names()
        for n, rule in enumerate(self.overrides):
            if not any(re.fullmatch(rule.pattern, name) for name in names):
                space_error(self.source, f"formats.overrides[{n}].layers",
                            f"{shown(rule.pattern)} matches no layer (it must match a whole name); layer names look "
                            f"like {', '.join(names[:4])}, ..., {names[-1]}")

    @property
    def path(self) -> Path | None:
        """The file the space was read from (``None`` for a space built from a dict)."""
        path = Path(self.source)
        return path if path.is_file() else None

    # ---------------------------------------------------------------- structure
    @property
    def max_depths(self) -> tuple[int, ...]:
        """Depth of every stage in the max network."""
        return tuple(stage.max_depth for stage in self.network.stages)

    def layer_names(self, candidate: Candidate | None = None) -> list[str]:
        """timm module names of the quantized layers of ``candidate`` (default: the max network), in order."""
        depths = candidate.depths if candidate is not None else self.max_depths
        names = ["conv_stem"]
        for i, (stage, depth) in enumerate(zip(self.network.stages, depths)):
            names += [f"blocks.{i}.{j}.{conv}" for j in range(depth) for conv in BLOCK_LAYERS[stage.type]]
        return names + ["conv_head", "classifier"]

    def layer_menu(self, layer_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(weight formats, activation formats)`` allowed for a layer: the first matching override wins."""
        menu = self._menus.get(layer_name)
        if menu is None:
            raise CandidateError(f"{self.source}: no layer named '{layer_name}'; layers are "
                                 f"{', '.join(self.layer_names())}")
        return menu

    @cached_property
    def _menus(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        menus = {}
        for name in self.layer_names():
            rule = next((r for r in self.overrides if re.fullmatch(r.pattern, name)), None)
            weights = rule.weights if rule and rule.weights else self.weight_formats
            activations = rule.activations if rule and rule.activations else self.activation_formats
            menus[name] = (weights, activations)
        return menus

    # ---------------------------------------------------------------- decisions
    def build(self, pick: Pick) -> Candidate:
        """Define-by-run construction: walk the network in decision order and ask ``pick(name, kind, choices)``
        for every active decision, single-choice ones included.

        ``kind`` is one of ``width_mult, depth, kernel_size, expand_ratio, w_fmt, a_fmt``. Blocks beyond the
        chosen depth are never asked for, so conditional choices come for free: sampling, mutation and
        crossover are all ``build`` calls, and an Optuna trial is
        ``space.build(lambda name, kind, choices: trial.suggest_categorical(name, choices))``.
        """
        net = self.network
        width = pick("width_mult", "width_mult", net.width_mult)
        blocks = []
        for i, stage in enumerate(net.stages):
            depth = pick(f"stages.{i}.depth", "depth", stage.depth)
            blocks.append(tuple(
                BlockChoice(pick(f"blocks.{i}.{j}.kernel_size", "kernel_size", stage.kernel_size),
                            pick(f"blocks.{i}.{j}.expand_ratio", "expand_ratio", stage.expand_ratio))
                for j in range(depth)
            ))
        arch = Candidate(width, tuple(blocks), ())
        formats = []
        for layer in self.layer_names(arch):
            w_menu, a_menu = self.layer_menu(layer)
            formats.append((layer, pick(f"{layer}.w_fmt", "w_fmt", w_menu), pick(f"{layer}.a_fmt", "a_fmt", a_menu)))
        return Candidate(width, tuple(blocks), tuple(formats))

    def _active_decisions(self, candidate: Candidate) -> list[Decision]:
        """Every decision active in ``candidate``, single-choice ones included."""
        seen: list[Decision] = []
        values = _choices_dict(candidate)

        def record(name: str, kind: str, choices: tuple) -> Any:
            seen.append(Decision(name, choices))
            return values[name]

        self.build(record)
        return seen

    @cached_property
    def _max_decisions(self) -> tuple[Decision, ...]:
        deepest = self.build(lambda name, kind, choices: max(choices) if kind == "depth" else choices[0])
        return tuple(self._active_decisions(deepest))

    def decisions(self) -> tuple[Decision, ...]:
        """Flat categorical decisions of the max network, in network order; single-choice ones are constants
        and left out (:meth:`candidate_from_choices` fills them in)."""
        return tuple(d for d in self._max_decisions if len(d.choices) > 1)

    def candidate_from_choices(self, choices: Mapping[str, Any]) -> Candidate:
        """The candidate of a ``{decision name: value}`` mapping; decisions of inactive blocks are ignored."""
        known = [d.name for d in self._max_decisions]
        for name in choices:
            if name not in known:
                raise CandidateError(f"unknown decision '{name}'; {did_you_mean(name, known)}decisions look like "
                                     f"{', '.join(known[:3])}, ...")

        def pick(name: str, kind: str, options: tuple) -> Any:
            if name not in choices:
                if len(options) == 1:
                    return options[0]
                raise CandidateError(f"missing a value for the active decision '{name}' (choices {list(options)})")
            value = choices[name]
            if value not in options:
                raise CandidateError(f"{self.source}: decision '{name}' = {value!r} is not one of {list(options)}")
            return options[options.index(value)]

        return self.build(pick)

    def choices_of(self, candidate: Candidate) -> dict[str, Any]:
        """``{decision name: value}`` for the active, multi-choice decisions of ``candidate``."""
        values = _choices_dict(candidate)
        return {d.name: values[d.name] for d in self._active_decisions(candidate) if len(d.choices) > 1}

    def outside(self, outer: SearchSpace) -> str | None:
        """Why a candidate of this space may not be one of ``outer`` (the first difference, naming the field), or
        None when every candidate of this space is one of ``outer``: same data and network skeleton, and every
        decision's choices among ``outer``'s. A supernet trained on ``outer`` then scores this space's candidates,
        e.g. a menu narrowed to the formats a target chip runs, without training another one."""
        for field in ("name", "input_size", "in_chans", "num_classes"):
            mine, theirs = getattr(self.dataset, field), getattr(outer.dataset, field)
            if mine != theirs:
                return f"dataset.{field} is {mine!r}, not {theirs!r}"
        net, other = self.network, outer.network
        if (net.stem_channels, net.head_channels, len(net.stages)) != (
                other.stem_channels, other.head_channels, len(other.stages)):
            return "network: the stem, the head or the number of stages differ"
        for i, (stage, theirs) in enumerate(zip(net.stages, other.stages)):
            if (stage.type, stage.channels, stage.stride) != (theirs.type, theirs.channels, theirs.stride):
                return f"network.stages[{i}]: the block type, channels or stride differ"
        known = {d.name: d.choices for d in outer._max_decisions}
        for decision in self._max_decisions:
            extra = [c for c in decision.choices if c not in known.get(decision.name, ())]
            if extra:
                return f"{decision.name}: {extra[0]!r} is not one of {list(known.get(decision.name, ()))}"
        return None

    def validate_candidate(self, candidate: Candidate) -> None:
        """Raise :class:`CandidateError` naming the first field of ``candidate`` outside this space."""
        stages = len(self.network.stages)
        if len(candidate.blocks) != stages:
            raise CandidateError(f"candidate {candidate.id}: has {len(candidate.blocks)} stages, the space "
                                 f"{self.source} has {stages}")
        for i, (depth, stage) in enumerate(zip(candidate.depths, self.network.stages)):
            if depth not in stage.depth:
                raise CandidateError(f"candidate {candidate.id}: stages.{i}.depth = {depth} is not one of "
                                     f"{list(stage.depth)} (network.stages[{i}].depth in {self.source})")
        expected, given = self.layer_names(candidate), [name for name, _, _ in candidate.formats]
        if given != expected:
            missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
            problem = (f"lack layers {missing}" if missing else f"name layers it does not have: {extra}" if extra
                       else "are not in network order")
            raise CandidateError(f"candidate {candidate.id}: its formats {problem}; formats list every active "
                                 "layer once, in network order (see space.layer_names(candidate))")
        try:
            self.candidate_from_choices(_choices_dict(candidate))
        except CandidateError as exc:
            raise CandidateError(f"candidate {candidate.id}: {exc}") from None

    # ---------------------------------------------------------------- candidates
    def sample(self, rng: RngLike = None) -> Candidate:
        """A candidate with every active decision drawn uniformly (a seed or a numpy Generator)."""
        gen = _as_rng(rng)
        return self.build(lambda name, kind, choices: _pick_random(gen, choices))

    def sample_uniform(self, rng: RngLike = None) -> Candidate:
        """A random architecture with one weight and one activation format, each drawn uniformly from the space's
        format lists, in every layer (clamped to each layer's menu, as :meth:`uniform`)."""
        gen = _as_rng(rng)
        arch = self.sample(gen)
        return self.uniform(_pick_random(gen, self.weight_formats), _pick_random(gen, self.activation_formats), arch,
                            clamp=True)

    def smallest(self) -> Candidate:
        """Minimum width, depth, kernel and expansion, and the fewest-bit format of every layer's menu."""
        return self.build(lambda name, kind, choices: min(choices, key=_order_key(kind)))

    def largest(self) -> Candidate:
        """Maximum width, depth, kernel and expansion, and the most-bit format of every layer's menu."""
        return self.build(lambda name, kind, choices: max(choices, key=_order_key(kind)))

    def uniform(self, w_fmt: str, a_fmt: str, arch: str | Candidate = "largest", *, clamp: bool = False) -> Candidate:
        """Every layer in ``w_fmt``/``a_fmt`` on the architecture of ``arch`` (``"largest"``, ``"smallest"``
        or a candidate). A layer whose menu lacks the format raises, or with ``clamp=True`` gets the menu's
        format nearest in bits (same family preferred, then more bits)."""
        for fmt in (w_fmt, a_fmt):
            if fmt not in format_names():
                raise CandidateError(f"unknown format '{fmt}'; valid formats: {', '.join(format_names())}")
        if isinstance(arch, str):
            if arch not in ("largest", "smallest"):
                raise CandidateError(f"arch must be 'largest', 'smallest' or a Candidate, got {arch!r}")
            arch = self.largest() if arch == "largest" else self.smallest()
        values = _choices_dict(arch)
        wanted = {"w_fmt": w_fmt, "a_fmt": a_fmt}

        def pick(name: str, kind: str, choices: tuple) -> Any:
            if kind not in wanted:
                return values[name]
            if wanted[kind] in choices:
                return wanted[kind]
            if not clamp:
                raise CandidateError(f"layer '{name.rsplit('.', 1)[0]}' allows {kind} {list(choices)} only, not "
                                     f"'{wanted[kind]}' ({self.source}); pass clamp=True to use the nearest")
            return _nearest_format(wanted[kind], choices)

        return self.build(pick)

    def uniform_pairs(self) -> list[tuple[str, str]]:
        """Every ``(w_fmt, a_fmt)`` of the space's format lists, most bits first (weights, then activations)."""
        pairs = [(w_fmt, a_fmt) for w_fmt in self.weight_formats for a_fmt in self.activation_formats]
        return sorted(pairs, key=lambda p: (-get_format(p[0]).bits_per_element, -get_format(p[1]).bits_per_element))

    def uniform_references(self) -> list[Candidate]:
        """The largest architecture in each of :meth:`uniform_pairs` (clamped to each layer's menu), each once:
        what a user deploys without a search, so the points a searched candidate has to beat."""
        references = (self.uniform(w_fmt, a_fmt, "largest", clamp=True) for w_fmt, a_fmt in self.uniform_pairs())
        return list({c.id: c for c in references}.values())

    def mutate(self, candidate: Candidate, rng: RngLike = None, prob: float = 0.1) -> Candidate:
        """Re-draw each active multi-choice decision with probability ``prob`` (always to a different value);
        blocks that a deeper depth activates get uniform values."""
        gen, current = _as_rng(rng), _choices_dict(candidate)

        def pick(name: str, kind: str, choices: tuple) -> Any:
            if name not in current:
                return _pick_random(gen, choices)
            if len(choices) > 1 and gen.random() < prob:
                return _pick_random(gen, [c for c in choices if c != current[name]])
            return current[name]

        return self.build(pick)

    def crossover(self, a: Candidate, b: Candidate, rng: RngLike = None) -> Candidate:
        """Uniform crossover: each decision from either parent with equal probability (from the parent where
        it is active if only one has it; uniform if neither has it)."""
        gen, parents = _as_rng(rng), (_choices_dict(a), _choices_dict(b))

        def pick(name: str, kind: str, choices: tuple) -> Any:
            options = [p[name] for p in parents if name in p]
            return _pick_random(gen, options or choices)

        return self.build(pick)

    def count(self) -> int:
        """Exact number of distinct candidates (inactive blocks contribute nothing)."""
        def menu_size(layer: str) -> int:
            w_menu, a_menu = self.layer_menu(layer)
            return len(w_menu) * len(a_menu)

        total = len(self.network.width_mult)
        for layer in ("conv_stem", "conv_head", "classifier"):
            total *= menu_size(layer)
        for i, stage in enumerate(self.network.stages):
            stage_total, prefix = 0, 1
            for j in range(stage.max_depth):
                prefix *= len(stage.kernel_size) * len(stage.expand_ratio) * math.prod(
                    menu_size(f"blocks.{i}.{j}.{conv}") for conv in BLOCK_LAYERS[stage.type])
                stage_total += prefix if j + 1 in stage.depth else 0
            total *= stage_total
        return total


def _choices_dict(candidate: Candidate) -> dict[str, Any]:
    """All decision values of a candidate, single-choice ones included, by decision name."""
    values: dict[str, Any] = {"width_mult": candidate.width_mult}
    for i, stage in enumerate(candidate.blocks):
        values[f"stages.{i}.depth"] = len(stage)
        for j, block in enumerate(stage):
            values[f"blocks.{i}.{j}.kernel_size"] = block.kernel_size
            values[f"blocks.{i}.{j}.expand_ratio"] = block.expand_ratio
    for layer, w_fmt, a_fmt in candidate.formats:
        values[f"{layer}.w_fmt"], values[f"{layer}.a_fmt"] = w_fmt, a_fmt
    return values


def _order_key(kind: str) -> Callable[[Any], Any]:
    if kind in ("w_fmt", "a_fmt"):
        return lambda name: get_format(name).bits_per_element
    return lambda value: value


def _nearest_format(wanted: str, menu: Sequence[str]) -> str:
    target = get_format(wanted)

    def distance(name: str) -> tuple:
        fmt = get_format(name)
        return abs(fmt.bits_per_element - target.bits_per_element), fmt.family != target.family, -fmt.bits_per_element

    return min(menu, key=distance)

