"""Checkpoints of a strategy's training phase in the search directory, so that a killed search resumes it.

The strategies that train or measure before they score candidates (LIMPQ's indicator run, CLADO's sensitivity
measurement, the bilevel searches of ``dnas``/``differentiable``/``ssps``, FLIQS's runs) save the whole state of
that phase (weights, optimizers, random generators, step) with :func:`~automq.io.atomic_torch_save` into the
search directory at intervals, and a resumed search loads it with :func:`~automq.io.safe_torch_load`
(``weights_only=True``) and continues from the step it holds, so that it ends where an uninterrupted run would.
Each checkpoint records the configuration it belongs to (strategy options, seed, budget level); a checkpoint of
another configuration is ignored and its phase starts over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from automq.io import atomic_torch_save, safe_torch_load

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 60.0  # seconds of training between two saves: a kill loses at most this much work


class PhaseCheckpoint:
    """The checkpoint file ``{directory}/{name}.pt`` of one training phase; inert when ``directory`` is ``None``
    (a strategy run outside a search directory).

    Args:
        directory: the search directory (``TrialRecorder.state_dir``).
        name: the file's stem, e.g. ``limpq_indicators`` or ``dnas_search_0``.
        config: everything that determines the phase's result (JSON-able); a saved state of another
            configuration is not loaded.
    """

    def __init__(self, directory: Path | None, name: str, config: Mapping[str, Any]) -> None:
        self.path = None if directory is None else Path(directory) / f"{name}.pt"
        self.config = json.dumps(config, sort_keys=True, default=str)
        self._saved_at = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state of this configuration, or ``None`` when there is none (or it is of another one)."""
        if self.path is None or not self.path.is_file():
            return None
        saved = safe_torch_load(self.path)
        if saved.get("config") != self.config:
            logger.warning("%s was saved with another configuration; its phase starts over", self.path)
            return None
        return saved["state"]

    def save(self, state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``state`` atomically."""
        if self.path is not None:
            atomic_torch_save({"config": self.config, "state": dict(state)}, self.path)
            self._saved_at = time.monotonic()

    def save_due(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Save ``state()`` when :data:`CHECKPOINT_EVERY_S` have passed since the last save."""
        if self.path is not None and time.monotonic() - self._saved_at >= CHECKPOINT_EVERY_S:
            self.save(state())

