"""The schema of search-space files: typed, frozen sections and the readers that validate them.

Every reader raises :class:`SpaceError` naming the file, the field path (``network.stages[2].kernel_size``),
what was expected and, for misspelt keys or names, the closest valid one. :func:`read_space_file` parses the
YAML with a loader that refuses what no space file needs and a hostile one could abuse (anchors and aliases,
duplicate keys, deep nesting, oversized files, structures and numbers); every size a file can ask for is bounded
(the ``MAX_*`` constants) before anything is allocated, and values echoed in messages are cut to
``MAX_SHOWN_CHARS`` characters (:func:`shown`). :func:`parse_space` returns the fields of a
:class:`~automq.space.SearchSpace`; the check that needs the assembled space (override patterns that
match no layer) lives in :mod:`automq.space.space`, and the one that needs costs (budgets below the smallest
candidate) in :func:`automq.cost.check_budgets`. The file reference is ``docs/space-files.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

try:  # Python's own regex parser: the private re._parser since 3.11, kept as sre_parse should it move again
    from re import _parser as _regex_parser
except ImportError:  # pragma: no cover - no supported Python lacks re._parser
    import sre_parse as _regex_parser

from automq.data import dataset_names
from automq.errors import SpaceError
from automq.numerics.formats import format_names

__all__ = [
    "BLOCK_LAYERS", "COST_METRICS", "DATASET_SHAPES", "METRICS", "DatasetSpec", "FormatRule", "NetworkSpec",
    "Objective", "SearchSpec", "StageSpec", "TrainingSpec", "did_you_mean", "parse_space", "read_space_file",
    "shown", "space_error",
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
# Bounds on everything a space file can make automq read or allocate, so that a hostile or mistyped file gets one
# clear error instead of a MemoryError. Each is several times what the full ImageNet MobileNetV2 space
# (spaces/mbv2_imagenet.yaml) uses; docs/space-files.md lists them under "Limits".
MAX_FILE_BYTES = 1 << 20  # a real space file is 1-3 KiB
MAX_NESTING = 16  # levels of a value, the root being 1 (network.stages[0].depth[0]: 6); PyYAML recurses per level
MAX_NODES = 10_000  # values, keys included (spaces/mbv2_imagenet.yaml has 271); 1 MiB of "1," would be 500,000
MAX_INT_CHARS = 40  # of an integer literal: Python's int() raises a ValueError beyond 4300 digits
MAX_LIST_ITEMS = 64  # of any list: stages, choices, override rules, objectives
MAX_NAME_CHARS = 200  # of any string except the description and paths
MAX_TEXT_CHARS = 10_000  # of the description
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_CHANNELS = 8192  # stem, stage and head channels before the width multiplier
MAX_DEPTH = 32  # blocks per stage
MAX_KERNEL_SIZE = 31
MAX_EXPAND_RATIO = 16
MAX_WIDTH_MULT = 4.0
MAX_IMAGES = 10_000_000  # any image count: val_size, train_size, eval_size, calib_size, finetune_images
MAX_SHOWN_CHARS = 60  # of an input value echoed in an error message
_LIMITS_HINT = "automq bounds every size (see Limits in docs/space-files.md)"
_TOP_KEYS = ("name", "description", "dataset", "network", "formats", "objectives", "budgets", "seed",
             "training", "search", "latency_table")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class DatasetSpec:
    """Which data to train and validate on, and the network input it implies."""

    name: str
    root: str | None = field(default=None, metadata={"max": MAX_PATH_CHARS})
    input_size: int = field(default=32, metadata={"min": 8, "max": 2048})
    in_chans: int | None = field(default=None, metadata={"min": 1, "max": 256})
    num_classes: int | None = field(default=None, metadata={"min": 2, "max": 100_000})
    val_size: int = field(default=5000, metadata={"min": 1, "max": MAX_IMAGES})


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

    epochs: int = field(default=10, metadata={"min": 1, "max": 10_000})
    batch_size: int = field(default=128, metadata={"min": 1, "max": 65_536})
    lr: float = field(default=0.05, metadata={"min": 0.0})
    momentum: float = field(default=0.9, metadata={"min": 0.0})
    weight_decay: float = field(default=4e-5, metadata={"min": 0.0})
    warmup_epochs: int = field(default=0, metadata={"min": 0, "max": 10_000})
    train_size: int | None = field(default=None, metadata={"min": 1, "max": MAX_IMAGES})
    num_random: int = field(default=3, metadata={"min": 0, "max": 64})
    smallest: bool = False
    # candidates per step with a random architecture in one format throughout (LIMPQ's uniform bit-widths)
    uniform: int = field(default=0, metadata={"min": 0, "max": 64})


@dataclass(frozen=True)
class SearchSpec:
    """Defaults of ``automq search``: number of trials, validation and BN-recalibration images per candidate, the
    calibration blocks (runs of ``calib_size`` training images) that the refined front's accuracies average over
    (1: the search-time calibration only) and, of the front, how many trials at each uniform reference's cost do (0:
    all of it; see :mod:`automq.search.refine`), and the training images of the short fine-tune that precedes each score
    (0: the plain one-shot estimate)."""

    trials: int = field(default=100, metadata={"min": 1, "max": 1_000_000})
    eval_size: int | None = field(default=2000, metadata={"min": 1, "max": MAX_IMAGES})
    calib_size: int = field(default=512, metadata={"min": 1, "max": MAX_IMAGES})
    calib_blocks: int = field(default=1, metadata={"min": 1, "max": 64})
    # front trials at each uniform reference's cost measured under every block (0: the whole front)
    calib_contenders: int = field(default=0, metadata={"min": 0, "max": 1000})
    finetune_images: int = field(default=0, metadata={"min": 0, "max": MAX_IMAGES})


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

    def scalar(self, value: Any, path: str, kind: type, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        """``value`` if it is of ``kind`` and within ``[minimum, maximum]``; for a string, ``maximum`` bounds its
        length (default :data:`MAX_NAME_CHARS`)."""
        if kind is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = _parse_float(value)  # PyYAML reads 2.0e8 (no exponent sign) as a string
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(path, f"expected {_TYPE_NAMES[kind]}, got {_show(value)}")
        if kind is str:
            limit = int(maximum or MAX_NAME_CHARS)
            if len(value) > limit:
                self.fail(path, f"a string of {len(value)} characters, at most {limit} allowed; shorten it")
            return value
        if kind is float and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
        if minimum is not None and value < minimum:
            self.fail(path, f"expected a value >= {minimum}, got {shown(value)}")
        if maximum is not None and value > maximum:
            self.fail(path, f"expected a value <= {maximum}, got {shown(value)}; {_LIMITS_HINT}")
        return value

    def bounded_list(self, value: list, path: str) -> list:
        """``value`` if it has at most :data:`MAX_LIST_ITEMS` entries (checked before any entry is read)."""
        if len(value) > MAX_LIST_ITEMS:
            self.fail(path, f"a list of {len(value)} entries, at most {MAX_LIST_ITEMS} allowed; {_LIMITS_HINT}")
        return value

    def choices(self, value: Any, path: str, kind: type, minimum: float | None = None,
                maximum: float | None = None) -> tuple:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {_TYPE_NAMES[kind]} choices, e.g. [3, 5], got {_show(value)}")
        if not value:
            self.fail(path, "empty choice list; give at least one choice")
        items = tuple(self.scalar(item, f"{path}[{n}]", kind, minimum, maximum)
                      for n, item in enumerate(self.bounded_list(value, path)))
        for n, item in enumerate(items):
            if item in items[:n]:
                self.fail(f"{path}[{n}]", f"duplicate choice {shown(item)}; list each choice once")
        return items

    def formats(self, value: Any, path: str) -> tuple[str, ...]:
        names = self.choices(value, path, str)
        valid = format_names()
        for n, name in enumerate(names):
            if name not in valid:
                self.fail(f"{path}[{n}]", f"unknown format {shown(name)}; {did_you_mean(name, valid)}"
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
                item, _join(path, spec.name), kind, spec.metadata.get("min"), spec.metadata.get("max"))
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
    """``"did you mean 'x'? "`` for the closest valid name, or nothing (always for a non-string or a long one)."""
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        return ""
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _join(path: str, key: Any) -> str:
    name = _clip(key) if isinstance(key, str) else shown(key)
    return f"{path}.{name}" if path else name


def _clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


# reprlib stops at two levels and a few items per container, so even an alias bomb's billions of shared
# references are shown in bounded time; the cut to MAX_SHOWN_CHARS comes after.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, MAX_SHOWN_CHARS, MAX_SHOWN_CHARS, 40


def shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`MAX_SHOWN_CHARS` and computed in bounded time: how messages echo an input."""
    try:
        text = _SHOWN.repr(value)
    except ValueError:  # an int of more than 4300 digits, which Python refuses to turn into text
        text = f"<{type(value).__name__} too large to show>"
    return _clip(text)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {shown(value)}"


# -------------------------------------------------------------------- reading the file
def read_space_file(path: Path) -> Any:
    """The data of a YAML space file, read with :class:`_SpaceLoader` (no anchors, aliases, merge or duplicate keys,
    at most :data:`MAX_NESTING` levels) from at most :data:`MAX_FILE_BYTES` bytes."""
    source = str(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # one byte more tells a file at the limit from a longer one
    except OSError as exc:
        space_error(source, "", f"cannot read the space file: {exc.strerror}; check the path and its permissions")
    if len(raw) > MAX_FILE_BYTES:
        space_error(source, "", f"larger than {MAX_FILE_BYTES // 1024} KiB; a space file is a few KiB of YAML, "
                    "check that this is the right file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        space_error(source, "", f"not UTF-8 text (byte {exc.start}); save the space file as UTF-8")
    loader = _SpaceLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _clip(getattr(exc, "problem", None) or str(exc), 2 * MAX_SHOWN_CHARS)  # PyYAML quotes the input
        if isinstance(exc, yaml.constructor.ConstructorError):  # a !!python/... tag: refused, never run
            problem = f"{problem}; space files hold plain data only"
        space_error(source, "", f"YAML syntax error{where}: {problem}")
    finally:
        loader.dispose()


class _SpaceLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, with the field path and line, what no space file needs:

    * anchors and aliases (``&name``, ``*name``): nine nested aliases of nine items expand to 9^9 values (an
      "alias bomb"), and a space file is short enough to write every value out;
    * merge keys (``<<``) and duplicate keys, with which one value silently replaces another;
    * more than :data:`MAX_NODES` values (PyYAML spends about 0.7 KiB and 70 us on each), nesting deeper than
      :data:`MAX_NESTING` (the composer recurses per level) and integer literals longer than
      :data:`MAX_INT_CHARS` characters (``int()`` raises a ValueError beyond 4300 digits).

    Each node is checked as it is composed, before anything is constructed from it.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._open_paths: list[str] = []  # field paths of the nodes being composed, outermost first
        self._node_count = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        path = self._child_path(parent, index)
        event = self.peek_event()
        if event.anchor is not None:
            kind, sign = ("alias", "*") if isinstance(event, yaml.AliasEvent) else ("anchor", "&")
            self._fail(path, event.start_mark, f"YAML {kind} '{sign}{_clip(event.anchor)}'",
                       "space files refuse anchors and aliases, write the value out in full")
        self._node_count += 1
        if self._node_count > MAX_NODES:
            self._fail(path, event.start_mark, f"more than {MAX_NODES} values in one file",
                       f"a space file has a few hundred, {_LIMITS_HINT}")
        if len(self._open_paths) >= MAX_NESTING:
            self._fail(path, event.start_mark, f"nested more than {MAX_NESTING} levels deep",
                       "a space file needs 6 (network.stages[0].depth[0]), check the brackets and indentation")
        self._open_paths.append(path)
        node = super().compose_node(parent, index)
        self._open_paths.pop()
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node, path)
        elif node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_CHARS:
            self._fail(path, node.start_mark, f"an integer of {len(node.value)} characters",
                       f"at most {MAX_INT_CHARS} are allowed, {_LIMITS_HINT}")
        return node

    def _child_path(self, parent: yaml.Node | None, index: Any) -> str:
        """Field path of the node composed under ``parent``: ``index`` is a list position, a mapping value's key
        node, or None for a mapping key (which takes its mapping's path)."""
        path = self._open_paths[-1] if self._open_paths else ""
        if isinstance(index, int):
            return f"{path}[{index}]"
        if isinstance(index, yaml.ScalarNode):
            return _join(path, index.value)
        return path

    def _check_keys(self, node: yaml.MappingNode, path: str) -> None:
        first_lines: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                self._fail(path, key.start_mark, "YAML merge key (<<)",
                           "space files refuse merge keys, write the keys out in full")
            if not isinstance(key, yaml.ScalarNode):
                continue  # a list or mapping as key: refused as unhashable when constructed
            if (key.tag, key.value) in first_lines:
                self._fail(_join(path, key.value), key.start_mark, "duplicate key",
                           f"it is first given at line {first_lines[key.tag, key.value]}; keep only one")
            first_lines[key.tag, key.value] = key.start_mark.line + 1

    def _fail(self, path: str, mark: yaml.Mark, problem: str, remedy: str) -> NoReturn:
        space_error(self.source, path, f"{problem} at line {mark.line + 1}; {remedy}")


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
        seed=r.scalar(top.get("seed", 0), "seed", int, 0, 2**32 - 1),
        training=r.record(TrainingSpec, top.get("training"), "training"),
        search=search,
        latency_table=_read_latency_table(r, top.get("latency_table"), source, objectives, budgets),
        description=r.scalar(top.get("description", ""), "description", str, maximum=MAX_TEXT_CHARS),
    )


# -------------------------------------------------------------------- section readers
def _read_dataset(r: _Reader, value: Any) -> DatasetSpec:
    spec = r.record(DatasetSpec, value, "dataset")
    valid = dataset_names()
    if spec.name not in valid:
        r.fail("dataset.name", f"unknown dataset {shown(spec.name)}; {did_you_mean(spec.name, valid)}"
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
    stages = tuple(_read_stage(r, stage, f"network.stages[{i}]")
                   for i, stage in enumerate(r.bounded_list(net["stages"], "network.stages")))
    stride = 2 * math.prod(stage.stride for stage in stages)
    if stride > MAX_OUTPUT_STRIDE:
        r.fail("network.stages", f"total stride {stride} (stem 2 x stage strides) exceeds {MAX_OUTPUT_STRIDE}; "
               "set some stage strides to 1")
    return NetworkSpec(
        stem_channels=r.scalar(stem["channels"], "network.stem.channels", int, 1, MAX_CHANNELS),
        stages=stages,
        head_channels=r.scalar(head["channels"], "network.head.channels", int, 1, MAX_CHANNELS),
        width_mult=r.choices(net.get("width_mult", [1.0]), "network.width_mult", float, 0.01, MAX_WIDTH_MULT),
    )


def _read_stage(r: _Reader, value: Any, path: str) -> StageSpec:
    keys = ["type", "channels", "stride", "depth", "kernel_size", "expand_ratio"]
    stage = r.mapping(value, path, keys, keys[:5])
    kind = r.scalar(stage["type"], f"{path}.type", str)
    if kind not in BLOCK_LAYERS:
        r.fail(f"{path}.type", f"expected 'ds' (depthwise-separable) or 'ir' (inverted residual), got {shown(kind)}")
    if kind == "ir" and "expand_ratio" not in stage:
        r.fail(f"{path}.expand_ratio", "missing required key for an 'ir' stage, e.g. [3, 6]")
    kernels = r.choices(stage["kernel_size"], f"{path}.kernel_size", int, 1, MAX_KERNEL_SIZE)
    for n, k in enumerate(kernels):
        if k % 2 == 0:
            r.fail(f"{path}.kernel_size[{n}]", f"kernel size {k} is even; use odd sizes such as 3, 5, 7")
    expand = r.choices(stage.get("expand_ratio", [1]), f"{path}.expand_ratio", int, 1, MAX_EXPAND_RATIO)
    if kind == "ds" and expand != (1,):
        r.fail(f"{path}.expand_ratio", "a 'ds' stage has no expansion; remove the key or use [1]")
    stride = r.scalar(stage["stride"], f"{path}.stride", int)
    if stride not in (1, 2):
        r.fail(f"{path}.stride", f"expected 1 or 2, got {shown(stride)}")
    return StageSpec(kind, r.scalar(stage["channels"], f"{path}.channels", int, 1, MAX_CHANNELS), stride,
                     r.choices(stage["depth"], f"{path}.depth", int, 1, MAX_DEPTH), kernels, expand)


def _read_formats(r: _Reader, value: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[FormatRule, ...]]:
    section = r.mapping(value, "formats", ["weights", "activations", "overrides"], ["weights", "activations"])
    rules = section.get("overrides") or []
    if not isinstance(rules, list):
        r.fail("formats.overrides", f"expected a list of {{layers, weights, activations}} rules, got {_show(rules)}")
    overrides = []
    for n, rule in enumerate(r.bounded_list(rules, "formats.overrides")):
        path = f"formats.overrides[{n}]"
        rule = r.mapping(rule, path, ["layers", "weights", "activations"], ["layers"])
        pattern = _read_pattern(r, rule["layers"], f"{path}.layers")
        if "weights" not in rule and "activations" not in rule:
            r.fail(path, "a rule needs 'weights', 'activations' or both")
        overrides.append(FormatRule(
            pattern,
            r.formats(rule["weights"], f"{path}.weights") if "weights" in rule else None,
            r.formats(rule["activations"], f"{path}.activations") if "activations" in rule else None,
        ))
    return (r.formats(section["weights"], "formats.weights"),
            r.formats(section["activations"], "formats.activations"), tuple(overrides))


def _read_pattern(r: _Reader, value: Any, path: str) -> str:
    """An override's layer regex: valid, and free of nested repeats, so matching it cannot hang automq."""
    pattern = r.scalar(value, path, str)
    try:
        re.compile(pattern)
    except re.error as exc:
        r.fail(path, f"invalid regular expression {shown(pattern)}: {exc}")
    if _has_nested_repeat(_regex_parser.parse(pattern)):
        r.fail(path, f"{shown(pattern)} repeats a group that itself contains a repeat, which can take exponential "
                     r"time to match; repeat each part once (e.g. 'blocks\.\d+\.\d+\.conv_dw') or list names with '|'")
    return pattern


_REPEATS = (_regex_parser.MAX_REPEAT, _regex_parser.MIN_REPEAT)  # possessive repeats never backtrack


def _has_nested_repeat(pattern: Any) -> bool:
    """Whether a parsed regex repeats, more than once, a body that contains another repeat (at any depth): the
    shape of ``(a+)+b``, whose ways to split a string grow exponentially with its length when the match fails."""
    for op, argument in pattern:
        if op in _REPEATS and argument[1] > 1 and _contains_repeat(argument[2]):
            return True  # an optional body (at most once: ``(blocks\.\d+\.)?``) has only two ways to go
        if any(_has_nested_repeat(inner) for inner in _sub_patterns(argument)):
            return True
    return False


def _contains_repeat(pattern: Any) -> bool:
    return any(op in _REPEATS or any(_contains_repeat(inner) for inner in _sub_patterns(argument))
               for op, argument in pattern)


def _sub_patterns(argument: Any) -> Iterator[Any]:
    """The parsed sub-patterns inside one item's argument, whatever its layout: a group's body, a branch's
    alternatives, a lookaround's or conditional's parts."""
    if isinstance(argument, _regex_parser.SubPattern):
        yield argument
    elif isinstance(argument, (tuple, list)):
        for item in argument:
            yield from _sub_patterns(item)


def _read_objectives(r: _Reader, value: Any) -> tuple[Objective, ...]:
    if not isinstance(value, list) or not value:
        r.fail("objectives", f"expected a non-empty list of {{metric, mode}}, got {_show(value)}")
    objectives = []
    for n, item in enumerate(r.bounded_list(value, "objectives")):
        path = f"objectives[{n}]"
        item = r.mapping(item, path, ["metric", "mode"], ["metric"])
        metric = r.scalar(item["metric"], f"{path}.metric", str)
        if metric not in METRICS:
            r.fail(f"{path}.metric", f"unknown metric {shown(metric)}; {did_you_mean(metric, METRICS)}"
                   f"valid metrics: {', '.join(METRICS)}")
        if any(o.metric == metric for o in objectives):
            r.fail(f"{path}.metric", f"'{metric}' is listed twice")
        mode = r.scalar(item.get("mode", "max" if metric in MAXIMIZED else "min"), f"{path}.mode", str)
        if mode not in ("min", "max"):
            r.fail(f"{path}.mode", f"expected 'min' or 'max', got {shown(mode)}")
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
    path = Path(r.scalar(value, "latency_table", str, maximum=MAX_PATH_CHARS)).expanduser()
    if not path.is_absolute() and source != "<dict>":
        path = Path(source).parent / path
    try:
        found = path.is_file()
    except OSError as exc:  # e.g. a file name longer than the file system allows
        r.fail("latency_table", f"cannot access {shown(str(path))}: {exc.strerror}; give the path of a JSON file")
    if not found:
        r.fail("latency_table", f"{shown(str(path))}: no such file (relative paths are relative to the space file)")
    return path

