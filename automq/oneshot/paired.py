"""Per-image correctness of a score, and the standard errors it gives an accuracy and a difference of two.

An accuracy measured on ``n`` images is a binomial proportion: its standard error is ``sqrt(p (1 - p) / n)``,
0.8 points for p = 0.83 on 2,000 images, larger than most differences between neighbouring candidates. Two
candidates scored on the *same* images disagree on few of them, so the difference of their accuracies is far
better determined than either accuracy: with per-image outcomes ``a_i, b_i`` and ``d_i = a_i - b_i``, the paired
standard error is ``sqrt(var(d) / n)`` (the Wald interval of a paired difference of proportions, the one behind
McNemar's test). :class:`Correctness` keeps the outcomes packed, one bit per image, in the image order of the
validation split, so any two scores on the same images can be compared later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from automq.errors import DataError

__all__ = ["Correctness", "Difference", "binomial_se", "paired_difference"]


def binomial_se(accuracy: float, images: int) -> float:
    """Standard error of an accuracy measured on ``images`` independent images: ``sqrt(p (1 - p) / n)``."""
    if images < 1:
        raise DataError(f"an accuracy needs at least one image, got {images}")
    return math.sqrt(max(0.0, accuracy * (1.0 - accuracy)) / images)


@dataclass(frozen=True)
class Correctness:
    """Which images of the validation split (its first :attr:`images`, in order) a candidate classified right.

    ``bits`` is :func:`numpy.packbits` of the boolean outcomes (1.25 kB for 10,000 images), so an estimator can
    keep one for every score it makes.
    """

    bits: bytes
    images: int

    @classmethod
    def from_bools(cls, correct: np.ndarray) -> Correctness:
        """Pack a one-dimensional boolean array (one entry per image)."""
        correct = np.asarray(correct)
        if correct.dtype != np.bool_ or correct.ndim != 1:
            raise DataError(f"per-image correctness must be a 1-D bool array, got {correct.dtype} "
                            f"of shape {list(correct.shape)}")
        return cls(np.packbits(correct).tobytes(), len(correct))

    def bools(self) -> np.ndarray:
        """The outcomes as a boolean array of :attr:`images` entries."""
        return np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=self.images).astype(bool)

    @property
    def correct(self) -> int:
        """How many images were classified right."""
        return int(self.bools().sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.images

    @property
    def se(self) -> float:
        """The binomial standard error of :attr:`accuracy`."""
        return binomial_se(self.accuracy, self.images)


class Difference(NamedTuple):
    """``accuracy(a) - accuracy(b)`` on the same images and its paired standard error."""

    value: float
    se: float


def paired_difference(a: Correctness, b: Correctness) -> Difference:
    """The accuracy difference of two scores on the same images, with its paired standard error.

    With ``n10`` images right only in ``a`` and ``n01`` right only in ``b``, the difference is
    ``(n10 - n01) / n`` and its standard error ``sqrt(((n10 + n01) / n - ((n10 - n01) / n) ** 2) / n)``: only the
    images the two disagree on carry information, which is why neighbours are resolved far better than the
    binomial error of either accuracy suggests.
    """
    if a.images != b.images:
        raise DataError(f"scores on {a.images} and {b.images} images cannot be paired: score both candidates "
                        "on the same validation images")
    only_a = np.bitwise_and(_as_array(a), np.bitwise_not(_as_array(b)))
    only_b = np.bitwise_and(_as_array(b), np.bitwise_not(_as_array(a)))
    # packbits pads the last byte with zeros in both, so the padding is never counted as a disagreement
    n10, n01, n = _popcount(only_a), _popcount(only_b), a.images
    value = (n10 - n01) / n
    return Difference(value, math.sqrt(max(0.0, (n10 + n01) / n - value * value) / n))


def _as_array(score: Correctness) -> np.ndarray:
    return np.frombuffer(score.bits, dtype=np.uint8)


def _popcount(packed: np.ndarray) -> int:
    return int(np.unpackbits(packed).sum())
