"""The validation gate study's pure parts (experiments/validation_gate.py), on hand-built per-image outcomes: the gate
opens only on a validation win over every uniform format, and the shipped candidate is judged against every one on
test with the binding comparison's figures (oracle: paired differences and errors worked out by hand)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from automq.oneshot.paired import BlockCorrectness, Correctness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from validation_gate import judged, passes_gate  # noqa: E402

TOL = 16 * np.finfo(np.float64).eps


def right_on_first(count: int, images: int = 100) -> Correctness:
    return Correctness.from_bools(np.arange(images) < count)


def test_the_gate_opens_only_on_a_validation_win_over_every_uniform_format() -> None:
    searched = right_on_first(70)
    # over 50 right: +0.20, SE sqrt((0.20 - 0.04) / 100) = 0.04, a win; over 68 right: +0.02, SE 0.014, a tie
    assert passes_gate(searched, [right_on_first(50)])
    assert not passes_gate(searched, [right_on_first(50), right_on_first(68)])
    assert not passes_gate(right_on_first(50), [right_on_first(50)])  # itself: 0 ± 0, a tie


def test_the_shipped_candidate_is_judged_by_its_binding_comparison_on_test() -> None:
    outcomes = {name: BlockCorrectness((right_on_first(count),)) for name, count in
                (("mixed", 70), ("int4", 50), ("fp4", 68), ("int8", 75))}
    tie = judged("mixed", ["int4", "fp4"], outcomes)
    assert tie["verdict"] == "tie" and tie["uniform"] == "fp4" and abs(tie["difference"] - 0.02) <= TOL
    assert abs(tie["se"] - math.sqrt((0.02 - 0.02**2) / 100)) <= TOL
    loss = judged("mixed", ["int4", "fp4", "int8"], outcomes)  # int8 is right on 5 more images: -0.05, SE 0.0218
    assert loss["verdict"] == "loss" and loss["uniform"] == "int8" and abs(loss["difference"] + 0.05) <= TOL
    # a uniform format shipped where the gate closed ties itself at best
    assert judged("fp4", ["fp4"], outcomes)["verdict"] == "tie"
