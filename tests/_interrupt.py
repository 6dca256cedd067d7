"""An in-process stand-in for a kill: a batch source that raises ``KeyboardInterrupt`` after some batches.

Tests of the training-phase checkpoints patch a strategy module's ``endless_batches`` with :func:`interrupted_after`,
run the phase until it stops, and check that a second run continues from the checkpoint to the result of an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def interrupted_after(batches: int, source: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``source`` (an ``endless_batches``), except that every stream it makes raises ``KeyboardInterrupt`` when
    asked for batch number ``batches`` (counted from 0), as Ctrl-C during that step would."""

    def interrupted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for number, batch in enumerate(source(*args, **kwargs)):
            if number == batches:
                raise KeyboardInterrupt
            yield batch

    return interrupted
