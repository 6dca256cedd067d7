"""Training the supernet and estimating candidates from it: the third stage of the pipeline.

:mod:`~automq.oneshot.train` trains the shared weights (largest + random candidates per step, in-place
distillation, atomic checkpoints, exact resume), from a random start or from a float network of the largest
architecture (:func:`~automq.oneshot.train.load_float_network`); :mod:`~automq.oneshot.evaluate` is the one-shot
estimator (BN recalibration + validation), the stand-alone training path used as ground truth, and the float
network's training (:func:`~automq.oneshot.evaluate.train_float`).
"""

from automq.oneshot.train import SupernetTrainer, load_float_network, load_supernet, train_supernet, training_summary
from automq.oneshot.evaluate import OneShotEstimator, train_float, train_standalone

__all__ = [
    "OneShotEstimator", "SupernetTrainer", "load_float_network", "load_supernet", "train_float", "train_standalone",
    "train_supernet", "training_summary",
]
