"""The three-splits study's pure parts (experiments/three_splits.py): the images it holds out are exactly the ones
``load_dataset``'s training subset leaves out (oracle: the subset loaded through the public API), and its errors
match hand-worked values on hand-built outcomes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from automq.data import load_dataset
from automq.oneshot.paired import BlockCorrectness, Correctness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from three_splits import (image_differences, permutation_test, pooled, read_outcomes, trained_positions,  # noqa: E402
                          write_outcomes)

TOL = 16 * np.finfo(np.float64).eps
SYNTHETIC = {"num_images": 300, "num_test": 10, "num_classes": 3, "image_size": 8}


def test_the_trained_positions_are_the_training_subset_load_dataset_keeps() -> None:
    full = load_dataset("synthetic", input_size=8, val_size=60, seed=5, **SYNTHETIC).train
    subset = load_dataset("synthetic", input_size=8, val_size=60, train_subset=150, seed=5, **SYNTHETIC).train
    positions = trained_positions(full.tensors[1].numpy(), seed=5, train_size=150)
    assert len(set(positions.tolist())) == 150
    assert torch.equal(full.tensors[0][torch.from_numpy(positions)], subset.tensors[0])
    assert torch.equal(full.tensors[1][torch.from_numpy(positions)], subset.tensors[1])


def blocks(*rows: list[int]) -> BlockCorrectness:
    """Outcomes of 4 images under len(rows) blocks: rows[k][i] is image i's outcome under block k."""
    return BlockCorrectness(tuple(Correctness.from_bools(np.array(row, dtype=bool)) for row in rows))


def test_each_image_difference_is_averaged_over_the_blocks() -> None:
    a = blocks([1, 1, 0, 1], [1, 0, 0, 1])
    b = blocks([0, 1, 0, 0], [0, 1, 0, 1])
    # per-image differences under the blocks: (1, 0, 0, 1) and (1, -1, 0, 0), averaged 1, -0.5, 0, 0.5
    assert np.array_equal(image_differences(a, b), [1.0, -0.5, 0.0, 0.5])


def test_pooling_two_splits_scores_the_difference_on_all_their_images() -> None:
    a, b = blocks([1, 1, 1, 1]), blocks([0, 1, 1, 1])  # +1 of 4 on the first split
    c, d = blocks([1, 0, 0, 0]), blocks([1, 0, 0, 0])  # 0 of 4 on the second
    both = pooled((a, b), (c, d))
    # 1 of 8 images differ: (1/8) ± sqrt((1/8 - 1/64) / 8), the paired error of one block
    assert abs(both.value - 0.125) <= TOL and abs(both.se - math.sqrt((0.125 - 0.125**2) / 8)) <= TOL


def test_the_permutation_test_measures_the_disagreement_and_how_rare_it_is() -> None:
    rng = np.random.default_rng(0)
    # two comparisons: on the first split a leads by 1 on every image, on the second by 0 (mean 1, RMS 1)
    found = permutation_test(np.ones((2, 20)), np.zeros((2, 20)), rng, permutations=199)
    assert abs(found["mean"] - 1.0) <= TOL and abs(found["rms"] - 1.0) <= TOL
    # no re-split of the 40 pooled images is as extreme (one in C(40, 20) would be): the smallest p, 1 / 200
    assert found["p_mean"] == found["p_rms"] == 1 / 200
    # one comparison: (1 + 0) / 2 on one split, (0 - 1) / 2 on the other, a disagreement of 1
    signed = permutation_test(np.array([[1.0, 0.0]]), np.array([[0.0, -1.0]]), rng, permutations=99)
    assert abs(signed["mean"] - 1.0) <= TOL and abs(signed["rms"] - 1.0) <= TOL
    # identical splits: every re-split is at least as extreme as a disagreement of 0
    same = permutation_test(np.ones((3, 10)), np.ones((3, 10)), rng, permutations=99)
    assert abs(same["mean"]) <= TOL and same["p_mean"] == same["p_rms"] == 1.0


def test_outcomes_survive_the_file_they_are_kept_in(tmp_path: Path) -> None:
    scored = {"c1": {"val": blocks([1, 0, 1, 1], [0, 0, 1, 1]), "test": blocks([1, 1, 1, 0], [1, 1, 0, 0])}}
    path = tmp_path / "outcomes.npz"
    assert read_outcomes(path) == {}
    write_outcomes(path, scored)
    assert read_outcomes(path) == scored and not list(tmp_path.glob("*.partial*"))
