"""Shared test set-up: one torch thread per test process.

The CI machine has two cores; tiny tensors run faster single-threaded, and it keeps parallel helpers and Ray
workers from oversubscribing the machine.
"""

import torch

torch.set_num_threads(1)
