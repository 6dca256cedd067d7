"""The trial record every strategy produces and ``trials.jsonl`` stores, one line per trial.

It sits below both :mod:`automq.search.strategy` (which makes trials) and :mod:`automq.search.results` (which
stores and reads them), so neither imports the other at run time.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from automq.space.candidate import Candidate

__all__ = ["STATUSES", "Trial"]

STATUSES = ("ok", "infeasible", "failed")


@dataclass
class Trial:
    """One evaluated (or rejected, or failed) candidate, as written to ``trials.jsonl``."""

    number: int
    candidate: Candidate
    metrics: dict[str, float]
    status: str = "ok"
    error: str | None = None
    strategy: str = ""
    wall_s: float = 0.0
    worker: str = field(default_factory=socket.gethostname)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Trial.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def feasible(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["candidate"] = self.candidate.to_dict()
        record["candidate_id"] = self.candidate.id
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Trial:
        fields = {k: v for k, v in record.items() if k != "candidate_id"}
        fields["candidate"] = Candidate.from_dict(record["candidate"])
        return cls(**fields)
