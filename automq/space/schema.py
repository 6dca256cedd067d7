"""The schema of search-space files: typed, frozen sections and the readers that validate them.

Every reader raises :class:`SpaceError` naming the file, the field path (``network.stages[2].kernel_size``),
what was expected and, for misspelt keys or names, the closest valid one. :func:`parse_space` returns the
fields of a :class:`~automq.space.SearchSpace`; the check that needs the assembled space (override patterns that
match no layer) lives in :mod:`automq.space.space`, and the one that needs costs (budgets below the smallest
candidate) in :func:`automq.cost.check_budgets`. The file reference is ``docs/space-files.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from automq.data import dataset_names
from automq.errors import SpaceError
from automq.numerics.formats import format_names

__all__ = [
    "BLOCK_LAYERS", "COST_METRICS", "DATASET_SHAPES", "METRICS", "DatasetSpec", "FormatRule", "NetworkSpec",
    "Objective", "SearchSpec", "StageSpec", "TrainingSpec", "did_you_mean", "parse_space", "space_error",
]

METRICS = ("accuracy", "loss", "bitops", "size", "macs", "params", "energy", "peak_act", "latency")
COST_METRICS = METRICS[2:]
MAXIMIZED = ("accuracy",)
# Input channels and classes of the registered datasets whose shape is known before loading; for any other
# dataset (ImageFolder, or one added with automq.data.register_dataset) the file gives what is missing.
DATASET_SHAPES: dict[str, tuple[int | None, int | None]] = {
    "fashion_mnist": (1, 10), "cifar10": (3, 10), "synthetic": (1, 10), "imagefolder": (3, None),
}
BLOCK_LAYERS = {"ds": ("conv_dw", "conv_pw"), "ir": ("conv_pw", "conv_dw", "conv_pwl")}
MAX_OUTPUT_STRIDE = 32  # timm's EfficientNet default; beyond it timm silently turns strides into dilations
_TOP_KEYS = ("name", "description", "dataset", "network", "formats", "objectives", "budgets", "seed",
             "training", "search", "latency_table")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class DatasetSpec:
    """Which data to train and validate on, and the network input it implies."""

    name: str
    root: str | None = None
    input_size: int = field(default=32, metadata={"min": 8})
    in_chans: int | None = field(default=None, metadata={"min": 1})
    num_classes: int | None = field(default=None, metadata={"min": 2})
    val_size: int = field(default=5000, metadata={"min": 1})


@dataclass(frozen=True)
class StageSpec:
    """One timm stage: block type, unscaled output channels, stride of its first block, elastic choices."""

    type: str
    channels: int
    stride: int
    depth: tuple[int, ...]
    kernel_size: tuple[int, ...]
    expand_ratio: tuple[int, ...]

    @property
    def max_depth(self) -> int:
        return max(self.depth)


@dataclass(frozen=True)
class NetworkSpec:
    """Stem (3x3, stride 2, as timm), stages, 1x1 head and the width multipliers; channels are unscaled."""

    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int
    width_mult: tuple[float, ...]


@dataclass(frozen=True)
class FormatRule:
    """Menus for the layers whose name matches ``pattern`` in full; ``None`` keeps the default menu."""

    pattern: str
    weights: tuple[str, ...] | None
    activations: tuple[str, ...] | None


@dataclass(frozen=True)
class Objective:
    """A metric to optimise (``accuracy`` is maximised by default, every cost minimised)."""

    metric: str
    mode: str  # "min" | "max"


@dataclass(frozen=True)
class TrainingSpec:
    """Defaults of ``automq train-supernet`` (command-line options override them)."""

    epochs: int = field(default=10, metadata={"min": 1})
    batch_size: int = field(default=128, metadata={"min": 1})
    lr: float = field(default=0.05, metadata={"min": 0.0})
    momentum: float = field(default=0.9, metadata={"min": 0.0})
    weight_decay: float = field(default=4e-5, metadata={"min": 0.0})
    warmup_epochs: int = field(default=0, metadata={"min": 0})
    train_size: int | None = field(default=None, metadata={"min": 1})
    num_random: int = field(default=3, metadata={"min": 0})
    smallest: bool = False


@dataclass(frozen=True)
class SearchSpec:
    """Defaults of ``automq search``: number of trials, validation and BN-recalibration images per candidate, and
    the training images of the short fine-tune that precedes each score (0: the plain one-shot estimate)."""

    trials: int = field(default=100, metadata={"min": 1})
    eval_size: int | None = field(default=2000, metadata={"min": 1})
    calib_size: int = field(default=512, metadata={"min": 1})
    finetune_images: int = field(default=0, metadata={"min": 0})


def space_error(source: str, path: str, message: str) -> NoReturn:
    """Raise the :class:`SpaceError` of a field: ``"{file}: {field path}: {message}"``."""
    raise SpaceError(f"{source}: {path}: {message}" if path else f"{source}: {message}")


class _Reader:
    """Type-checking accessors that raise :class:`SpaceError` naming the file and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        space_error(self.source, path, message)

    def mapping(self, value: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with keys {list(allowed)}, got {_show(value)}")
        for key in value:
            if key not in allowed:
                self.fail(_join(path, key),
                          f"unknown key; {did_you_mean(key, allowed)}valid keys: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.fail(_join(path, key), "missing required key")
        return value

    def scalar(self, value: Any, path: str, kind: type, minimum: float | None = None) -> Any:
        if kind is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = _parse_float(value)  # PyYAML reads 2.0e8 (no exponent sign) as a string
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(path, f"expected {_TYPE_NAMES[kind]}, got {_show(value)}")
        if kind is float and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
        if minimum is not None and value < minimum:
            self.fail(path, f"expected a value >= {minimum}, got {value}")
        return value

    def choices(self, value: Any, path: str, kind: type, minimum: float | None = None) -> tuple:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {_TYPE_NAMES[kind]} choices, e.g. [3, 5], got {_show(value)}")
        if not value:
            self.fail(path, "empty choice list; give at least one choice")
        items = tuple(self.scalar(item, f"{path}[{n}]", kind, minimum) for n, item in enumerate(value))
        if len(set(items)) != len(items):
            self.fail(path, f"duplicate choices in {list(items)}; list each choice once")
        return items

    def formats(self, value: Any, path: str) -> tuple[str, ...]:
        names = self.choices(value, path, str)
        valid = format_names()
        for n, name in enumerate(names):
            if name not in valid:
                self.fail(f"{path}[{n}]", f"unknown format '{name}'; {did_you_mean(name, valid)}"
                          f"valid formats: {', '.join(valid)}")
        return names

    def record(self, cls: type, value: Any, path: str) -> Any:
        """Read a flat dataclass (dataset, training, search) from a mapping, with its defaults and minima."""
        specs = dataclasses.fields(cls)
        hints = typing.get_type_hints(cls)
        required = [f.name for f in specs if f.default is dataclasses.MISSING]
        data = self.mapping({} if value is None else value, path, [f.name for f in specs], required)
        kwargs = {}
        for spec in specs:
            if spec.name not in data:
                continue
            kind, nullable = _unwrap_optional(hints[spec.name])
            item = data[spec.name]
            kwargs[spec.name] = None if (item is None and nullable) else self.scalar(
                item, _join(path, spec.name), kind, spec.metadata.get("min"))
        return cls(**kwargs)


def _unwrap_optional(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _parse_float(value: str | int) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def did_you_mean(value: Any, valid: typing.Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest valid name, or nothing."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def parse_space(data: Any, source: str) -> dict[str, Any]:
    """Validate a parsed space file and return the keyword arguments of ``SearchSpace``."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS, required=["name", "dataset", "network", "formats", "objectives"])
    objectives = _read_objectives(r, top["objectives"])
    budgets = {
        metric: r.scalar(limit, f"budgets.{metric}", float, 0.0)
        for metric, limit in r.mapping(top.get("budgets") or {}, "budgets", COST_METRICS).items()
    }
    weights, activations, overrides = _read_formats(r, top["formats"])
    dataset, search = _read_dataset(r, top["dataset"]), r.record(SearchSpec, top.get("search"), "search")
    if search.eval_size is not None and search.eval_size > dataset.val_size:
        r.fail("search.eval_size", f"{search.eval_size} exceeds dataset.val_size ({dataset.val_size}); the "
               "estimator can only score candidates on the held-out validation images")
    return dict(
        name=r.scalar(top["name"], "name", str),
        source=source,
        dataset=dataset,
        network=_read_network(r, top["network"]),
        weight_formats=weights,
        activation_formats=activations,
        overrides=overrides,
        objectives=objectives,
        budgets=budgets,
        seed=r.scalar(top.get("seed", 0), "seed", int, 0),
        training=r.record(TrainingSpec, top.get("training"), "training"),
        search=search,
        latency_table=_read_latency_table(r, top.get("latency_table"), source, objectives, budgets),
        description=r.scalar(top.get("description", ""), "description", str),
    )


# -------------------------------------------------------------------- section readers
def _read_dataset(r: _Reader, value: Any) -> DatasetSpec:
    spec = r.record(DatasetSpec, value, "dataset")
    valid = dataset_names()
    if spec.name not in valid:
        r.fail("dataset.name", f"unknown dataset '{spec.name}'; {did_you_mean(spec.name, valid)}"
               f"valid datasets: {', '.join(valid)}")
    in_chans, num_classes = DATASET_SHAPES.get(spec.name, (None, None))
    spec = dataclasses.replace(spec, in_chans=spec.in_chans or in_chans, num_classes=spec.num_classes or num_classes)
    for key in ("in_chans", "num_classes"):
        if getattr(spec, key) is None:
            r.fail(f"dataset.{key}", f"required for dataset '{spec.name}' (its shape is only known once loaded)")
    return spec


def _read_network(r: _Reader, value: Any) -> NetworkSpec:
    net = r.mapping(value, "network", ["stem", "stages", "head", "width_mult"], ["stem", "stages", "head"])
    stem = r.mapping(net["stem"], "network.stem", ["channels"], ["channels"])
    head = r.mapping(net["head"], "network.head", ["channels"], ["channels"])
    if not isinstance(net["stages"], list) or not net["stages"]:
        r.fail("network.stages", f"expected a non-empty list of stages, got {_show(net['stages'])}")
    stages = tuple(_read_stage(r, stage, f"network.stages[{i}]") for i, stage in enumerate(net["stages"]))
    stride = 2 * math.prod(stage.stride for stage in stages)
    if stride > MAX_OUTPUT_STRIDE:
        r.fail("network.stages", f"total stride {stride} (stem 2 x stage strides) exceeds {MAX_OUTPUT_STRIDE}; "
               "set some stage strides to 1")
    return NetworkSpec(
        stem_channels=r.scalar(stem["channels"], "network.stem.channels", int, 1),
        stages=stages,
        head_channels=r.scalar(head["channels"], "network.head.channels", int, 1),
        width_mult=r.choices(net.get("width_mult", [1.0]), "network.width_mult", float, 0.01),
    )


def _read_stage(r: _Reader, value: Any, path: str) -> StageSpec:
    keys = ["type", "channels", "stride", "depth", "kernel_size", "expand_ratio"]
    stage = r.mapping(value, path, keys, keys[:5])
    kind = r.scalar(stage["type"], f"{path}.type", str)
    if kind not in BLOCK_LAYERS:
        r.fail(f"{path}.type", f"expected 'ds' (depthwise-separable) or 'ir' (inverted residual), got '{kind}'")
    if kind == "ir" and "expand_ratio" not in stage:
        r.fail(f"{path}.expand_ratio", "missing required key for an 'ir' stage, e.g. [3, 6]")
    kernels = r.choices(stage["kernel_size"], f"{path}.kernel_size", int, 1)
    for n, k in enumerate(kernels):
        if k % 2 == 0:
            r.fail(f"{path}.kernel_size[{n}]", f"kernel size {k} is even; use odd sizes such as 3, 5, 7")
    expand = r.choices(stage.get("expand_ratio", [1]), f"{path}.expand_ratio", int, 1)
    if kind == "ds" and expand != (1,):
        r.fail(f"{path}.expand_ratio", "a 'ds' stage has no expansion; remove the key or use [1]")
    stride = r.scalar(stage["stride"], f"{path}.stride", int)
    if stride not in (1, 2):
        r.fail(f"{path}.stride", f"expected 1 or 2, got {stride}")
    return StageSpec(kind, r.scalar(stage["channels"], f"{path}.channels", int, 1), stride,
                     r.choices(stage["depth"], f"{path}.depth", int, 1), kernels, expand)


def _read_formats(r: _Reader, value: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[FormatRule, ...]]:
    section = r.mapping(value, "formats", ["weights", "activations", "overrides"], ["weights", "activations"])
    rules = section.get("overrides") or []
    if not isinstance(rules, list):
        r.fail("formats.overrides", f"expected a list of {{layers, weights, activations}} rules, got {_show(rules)}")
    overrides = []
    for n, rule in enumerate(rules):
        path = f"formats.overrides[{n}]"
        rule = r.mapping(rule, path, ["layers", "weights", "activations"], ["layers"])
        pattern = r.scalar(rule["layers"], f"{path}.layers", str)
        try:
            re.compile(pattern)
        except re.error as exc:
            r.fail(f"{path}.layers", f"invalid regular expression '{pattern}': {exc}")
        if "weights" not in rule and "activations" not in rule:
            r.fail(path, "a rule needs 'weights', 'activations' or both")
        overrides.append(FormatRule(
            pattern,
            r.formats(rule["weights"], f"{path}.weights") if "weights" in rule else None,
            r.formats(rule["activations"], f"{path}.activations") if "activations" in rule else None,
        ))
    return (r.formats(section["weights"], "formats.weights"),
            r.formats(section["activations"], "formats.activations"), tuple(overrides))


def _read_objectives(r: _Reader, value: Any) -> tuple[Objective, ...]:
    if not isinstance(value, list) or not value:
        r.fail("objectives", f"expected a non-empty list of {{metric, mode}}, got {_show(value)}")
    objectives = []
    for n, item in enumerate(value):
        path = f"objectives[{n}]"
        item = r.mapping(item, path, ["metric", "mode"], ["metric"])
        metric = r.scalar(item["metric"], f"{path}.metric", str)
        if metric not in METRICS:
            r.fail(f"{path}.metric", f"unknown metric '{metric}'; {did_you_mean(metric, METRICS)}"
                   f"valid metrics: {', '.join(METRICS)}")
        if any(o.metric == metric for o in objectives):
            r.fail(f"{path}.metric", f"'{metric}' is listed twice")
        mode = r.scalar(item.get("mode", "max" if metric in MAXIMIZED else "min"), f"{path}.mode", str)
        if mode not in ("min", "max"):
            r.fail(f"{path}.mode", f"expected 'min' or 'max', got '{mode}'")
        objectives.append(Objective(metric, mode))
    return tuple(objectives)


def _read_latency_table(r: _Reader, value: Any, source: str, objectives: Sequence[Objective],
                        budgets: Mapping[str, float]) -> Path | None:
    used = any(o.metric == "latency" for o in objectives) or "latency" in budgets
    if value is None:
        if used:
            r.fail("latency_table", "the 'latency' metric needs a per-layer latency table (a JSON file); "
                   "see docs/space-files.md")
        return None
    path = Path(r.scalar(value, "latency_table", str)).expanduser()
    if not path.is_absolute() and source != "<dict>":
        path = Path(source).parent / path
    if not path.is_file():
        r.fail("latency_table", f"{path}: no such file (relative paths are relative to the space file)")
    return path

