"""The tiny search space the tests build on, and the factory that states only what a test changes in it.

A two-stage MobileNetV2 (a ``ds`` stage, then an elastic ``ir`` stage) on 16x16 synthetic images: small enough
to train, enumerate or brute-force in a test. A test module names only its differences, so the reader sees what
matters to it; ``tests/conftest.py`` exposes :func:`tiny_space` as the ``tiny_space`` fixture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from automq.space.space import SearchSpace

DS_STAGE = {"type": "ds", "channels": 8, "stride": 1, "depth": [1], "kernel_size": [3]}
IR_STAGE = {"type": "ir", "channels": 16, "stride": 2, "depth": [1, 2], "kernel_size": [3, 5], "expand_ratio": [2, 3]}
TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "input_size": 16},
    "network": {
        "stem": {"channels": 8},
        "stages": [DS_STAGE, IR_STAGE],
        "head": {"channels": 32},
        "width_mult": [0.5, 1.0],
    },
    "formats": {"weights": ["int4", "int8"], "activations": ["int8", "fp8_e4m3"]},
    "objectives": [{"metric": "accuracy"}, {"metric": "bitops"}],
}
SpaceFactory = Callable[..., SearchSpace]  # the type of the ``tiny_space`` fixture
# A space with every kind of decision (kernel size in both stages, expansion, depth, width, formats), MX and
# learned-scale formats, and depthwise layers whose cost needs `groups`.
EVERY_DECISION = {
    "name": "tiny_arch",
    "dataset": {"val_size": 200},
    "network": {"stages": [{**DS_STAGE, "kernel_size": [3, 5]}, {**IR_STAGE, "expand_ratio": [2, 4]}]},
    "formats": {
        "weights": ["int4", "int8", "mxfp4_e2m1"],
        "activations": ["int8", "fp8_e4m3"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "search": {"eval_size": 200},
}

# one architecture (nothing elastic), so that only formats are decided: the format studies' space
FORMATS_ONLY = {"network": {"stages": [DS_STAGE, {**IR_STAGE, "depth": [2], "kernel_size": [3], "expand_ratio": [3]}],
                            "width_mult": [1.0]},
                "name": "tiny_formats"}


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` applied: mappings merge key by key, any other value (a list of
    stages or formats included) replaces the old one whole."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        old = out.get(key)
        both_mappings = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = merged(old, value) if both_mappings else copy.deepcopy(value)
    return out


def tiny_space_data(*changes: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The space file contents of :data:`TINY` with each mapping of ``changes``, then ``overrides``, merged in
    (:func:`merged`: a ``formats`` change without ``overrides`` keeps the earlier rules; ``[]`` drops them)."""
    data = TINY
    for change in (*changes, overrides):
        data = merged(data, change)
    return data


def tiny_space(*changes: Mapping[str, Any], folder: Path | None = None, **overrides: Any) -> SearchSpace:
    """The :class:`SearchSpace` of :func:`tiny_space_data`; with ``folder``, written to ``folder/{name}.yaml`` and
    read back, for code that needs the space file itself (training copies it into the run folder)."""
    data = tiny_space_data(*changes, **overrides)
    if folder is None:
        return SearchSpace.from_dict(data, source=f"<{data['name']}>")
    path = Path(folder) / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return SearchSpace.from_file(path)
