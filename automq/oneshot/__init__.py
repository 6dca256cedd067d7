"""Training the supernet and estimating candidates from it: the third stage of the pipeline.

:mod:`~automq.oneshot.train` trains the shared weights (largest + random candidates per step, in-place
distillation, atomic checkpoints, exact resume); :mod:`~automq.oneshot.evaluate` is the one-shot estimator
(BN recalibration + validation) and the stand-alone training path used as ground truth.
"""

from automq.oneshot.train import SupernetTrainer, load_supernet, train_supernet, training_summary
from automq.oneshot.evaluate import OneShotEstimator, train_standalone

__all__ = [
    "OneShotEstimator", "SupernetTrainer", "load_supernet", "train_standalone", "train_supernet", "training_summary",
]
