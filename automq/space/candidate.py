"""A candidate: one point of a search space (architecture + per-layer formats) as a frozen, hashable value.

A :class:`Candidate` knows nothing about its space: :meth:`automq.space.space.SearchSpace.validate_candidate` checks
membership. Its canonical JSON (sorted keys, no spaces) is stable across runs and machines, so
:attr:`Candidate.id` can name result folders and de-duplicate trials.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automq.errors import CandidateError

__all__ = ["BlockChoice", "Candidate"]

_KEYS = ("width_mult", "blocks", "formats")
_BLOCK_KEYS = ("kernel_size", "expand_ratio")


@dataclass(frozen=True)
class BlockChoice:
    """The elastic choices of one active block: depthwise kernel size and expansion ratio (1 for ``ds``)."""

    kernel_size: int
    expand_ratio: int

    def __post_init__(self) -> None:
        for key in _BLOCK_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CandidateError(f"BlockChoice.{key}: expected an integer, got {value!r}")


@dataclass(frozen=True)
class Candidate:
    """Width multiplier, the active blocks of every stage, and ``(layer, w_fmt, a_fmt)`` for every active layer.

    ``blocks[i]`` has one :class:`BlockChoice` per active block of stage ``i`` (its length is the stage depth);
    ``formats`` lists the active layers in network order, named as timm names its modules.
    """

    width_mult: float
    blocks: tuple[tuple[BlockChoice, ...], ...]
    formats: tuple[tuple[str, str, str], ...]

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so that equal candidates hash equally.
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, (int, float)):
            raise CandidateError(f"Candidate.width_mult: expected a number, got {self.width_mult!r}")
        object.__setattr__(self, "width_mult", float(self.width_mult))
        object.__setattr__(self, "blocks", tuple(tuple(stage) for stage in self.blocks))
        object.__setattr__(self, "formats", tuple(tuple(entry) for entry in self.formats))
        for i, stage in enumerate(self.blocks):
            for j, block in enumerate(stage):
                if not isinstance(block, BlockChoice):
                    raise CandidateError(f"Candidate.blocks[{i}][{j}]: expected a BlockChoice, got {block!r}")
        for n, entry in enumerate(self.formats):
            if len(entry) != 3 or not all(isinstance(part, str) for part in entry):
                raise CandidateError(
                    f"Candidate.formats[{n}]: expected [layer_name, w_fmt, a_fmt] strings, got {list(entry)!r}"
                )

    @property
    def depths(self) -> tuple[int, ...]:
        """Number of active blocks per stage."""
        return tuple(len(stage) for stage in self.blocks)

    def layer_formats(self) -> dict[str, tuple[str, str]]:
        """``{layer_name: (w_fmt, a_fmt)}`` in network order."""
        return {name: (w_fmt, a_fmt) for name, w_fmt, a_fmt in self.formats}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form: ``{width_mult, blocks: [[{kernel_size, expand_ratio}]], formats: [[l, w, a]]}``."""
        return {
            "width_mult": self.width_mult,
            "blocks": [
                [{"kernel_size": b.kernel_size, "expand_ratio": b.expand_ratio} for b in stage]
                for stage in self.blocks
            ],
            "formats": [list(entry) for entry in self.formats],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`CandidateError`."""
        _check_keys(data, _KEYS, "candidate")
        blocks = []
        for i, stage in enumerate(_as_list(data["blocks"], "candidate.blocks")):
            choices = []
            for j, block in enumerate(_as_list(stage, f"candidate.blocks[{i}]")):
                _check_keys(block, _BLOCK_KEYS, f"candidate.blocks[{i}][{j}]")
                choices.append(BlockChoice(block["kernel_size"], block["expand_ratio"]))
            blocks.append(tuple(choices))
        formats = [tuple(_as_list(entry, f"candidate.formats[{n}]"))
                   for n, entry in enumerate(_as_list(data["formats"], "candidate.formats"))]
        return cls(data["width_mult"], tuple(blocks), tuple(formats))

    def to_json(self) -> str:
        """Canonical JSON: sorted keys and no whitespace, identical for equal candidates."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        """Parse :meth:`to_json` output (or any JSON of :meth:`to_dict`'s shape)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CandidateError(f"candidate JSON is malformed: {exc}") from exc
        return cls.from_dict(data)

    @property
    def id(self) -> str:
        """First 10 hex digits of the SHA-1 of the canonical JSON: short, stable, collision-unlikely."""
        return hashlib.sha1(self.to_json().encode("utf-8")).hexdigest()[:10]


def _check_keys(data: Any, expected: tuple[str, ...], where: str) -> None:
    if not isinstance(data, Mapping):
        raise CandidateError(f"{where}: expected a mapping with keys {list(expected)}, got {data!r}")
    unknown = sorted(set(data) - set(expected))
    missing = [key for key in expected if key not in data]
    problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
    if problems:
        raise CandidateError(f"{where}: {' and '.join(problems)}; expected exactly the keys {list(expected)}")


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise CandidateError(f"{where}: expected a list, got {value!r}")
    return list(value)
