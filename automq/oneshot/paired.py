"""Per-image correctness of a score, and the standard errors it gives an accuracy and a difference of two.

An accuracy measured on ``n`` images is a binomial proportion: its standard error is ``sqrt(p (1 - p) / n)``,
0.8 points for p = 0.83 on 2,000 images, larger than most differences between neighbouring candidates. Two
candidates scored on the *same* images disagree on few of them, so the difference of their accuracies is far
better determined than either accuracy: with per-image outcomes ``a_i, b_i`` and ``d_i = a_i - b_i``, the paired
standard error is ``sqrt(var(d) / n)`` (the Wald interval of a paired difference of proportions, the one behind
McNemar's test). :class:`Correctness` keeps the outcomes packed, one bit per image, in the image order of the
validation split, so any two scores on the same images can be compared later.

A deployed candidate's outcomes also depend on the training images its batch norms were recalibrated on. Scored
once per calibration block on the same images (:class:`BlockCorrectness`), an accuracy is an images x blocks table
whose mean has two sources of error, the images and the blocks, both sampled: :func:`crossed_mean` gives its
standard error from the two-way crossed random-effects model, so that a difference counts the calibration as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from automq.errors import DataError

__all__ = ["BLOCKS_KEY", "BlockCorrectness", "Correctness", "Difference", "as_blocks", "binomial_se",
           "block_difference", "crossed_mean", "paired_difference"]

BLOCKS_KEY = "accuracy_calib_blocks"
"""Trial metric: the calibration blocks an accuracy averages over (absent: one, the search-time calibration)."""


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
    """``accuracy(a) - accuracy(b)`` on the same images and its paired standard error; ``df`` is the degrees of
    freedom of that error (infinite where it comes from many images alone, few where a few calibration blocks
    carry it)."""

    value: float
    se: float
    df: float = math.inf


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


def crossed_mean(table: np.ndarray) -> Difference:
    """The mean of an images x blocks ``table`` (per-image outcomes, or differences of two candidates' outcomes,
    under each calibration block) and its standard error with both the images and the blocks taken as sampled.

    The model is ``y_ik = mu + a_i + b_k + e_ik`` (image, block and interaction effects, independent); the variance
    of the grand mean is ``s2_a / n + s2_b / K + s2_e / (n K)``, estimated without bias by
    ``(MS_images + MS_blocks - MS_residual) / (n K)`` from the two-way analysis of variance, and never below either
    one-way part (``max(MS_images, MS_blocks) / (n K)``, what the model allows). ``df`` is Satterthwaite's
    approximation, so an interval can widen where a few blocks carry the error (at the floor, the kept part's own
    ``n - 1`` or ``K - 1``, so ``df`` jumps there, a known edge of Satterthwaite's approximation). One block gives the
    paired error of :func:`paired_difference` (the images' population variance over ``n``) with infinite ``df``.
    """
    table = np.asarray(table, dtype=np.float64)
    n, k = table.shape
    if n < 2 and k > 1:
        raise DataError(f"a standard error over calibration blocks needs at least 2 images, got {n}")
    grand = table.mean()
    if k == 1:
        return Difference(float(grand), math.sqrt(float(table.var()) / n))
    images, blocks = table.mean(axis=1), table.mean(axis=0)
    residual = table - images[:, None] - blocks[None, :] + grand
    parts = [(k * float(np.sum((images - grand) ** 2)) / (n - 1), n - 1),
             (n * float(np.sum((blocks - grand) ** 2)) / (k - 1), k - 1),
             (-float(np.sum(residual ** 2)) / ((n - 1) * (k - 1)), (n - 1) * (k - 1))]
    total = sum(ms for ms, _ in parts)
    floor = max(parts[:2])
    if total <= floor[0]:  # the interaction outweighs the rest: keep the larger one-way part and its freedom
        total, parts = floor[0], [floor]
    if total == 0.0:
        return Difference(float(grand), 0.0)
    df = total ** 2 / sum(ms ** 2 / freedom for ms, freedom in parts)
    return Difference(float(grand), math.sqrt(total / (n * k)), df)


@dataclass(frozen=True)
class BlockCorrectness:
    """One candidate's outcomes on the same images under each of several calibrations (one :class:`Correctness`
    per block of BN-recalibration images): its accuracy is the mean over blocks, its standard error
    :func:`crossed_mean`'s."""

    blocks: tuple[Correctness, ...]

    def __post_init__(self) -> None:
        if not self.blocks or len({block.images for block in self.blocks}) != 1:
            raise DataError(f"outcomes over calibration blocks need at least one block, all on the same images, got "
                            f"{[block.images for block in self.blocks]} images")

    @property
    def images(self) -> int:
        return self.blocks[0].images

    def table(self) -> np.ndarray:
        """The outcomes as an images x blocks array of 0 and 1."""
        return np.stack([block.bools() for block in self.blocks], axis=1).astype(np.int8)

    @property
    def accuracies(self) -> list[float]:
        """The accuracy under each block."""
        return [block.accuracy for block in self.blocks]

    @property
    def accuracy(self) -> float:
        return sum(block.correct for block in self.blocks) / (self.images * len(self.blocks))

    @property
    def se(self) -> float:
        return crossed_mean(self.table()).se


def block_difference(a: BlockCorrectness | Correctness, b: BlockCorrectness | Correctness) -> Difference:
    """``accuracy(a) - accuracy(b)``, both scored on the same images under the same calibration blocks (block k of
    one paired with block k of the other), with :func:`crossed_mean`'s standard error; a single :class:`Correctness`
    is one block."""
    a, b = as_blocks(a), as_blocks(b)
    if (a.images, len(a.blocks)) != (b.images, len(b.blocks)):
        raise DataError(f"outcomes on {a.images} images x {len(a.blocks)} blocks and {b.images} x {len(b.blocks)} "
                        "cannot be paired: measure both candidates on the same images and calibration blocks")
    return crossed_mean(a.table() - b.table())


def as_blocks(outcome: BlockCorrectness | Correctness | Sequence[Correctness]) -> BlockCorrectness:
    """``outcome`` as :class:`BlockCorrectness` (one :class:`Correctness` is a single block)."""
    if isinstance(outcome, BlockCorrectness):
        return outcome
    return BlockCorrectness((outcome,) if isinstance(outcome, Correctness) else tuple(outcome))


def _as_array(score: Correctness) -> np.ndarray:
    return np.frombuffer(score.bits, dtype=np.uint8)


def _popcount(packed: np.ndarray) -> int:
    return int(np.unpackbits(packed).sum())
