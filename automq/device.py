"""Which torch device a command runs on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

``auto`` (the CLI's default) takes the GPU when torch sees one and the CPU otherwise. Asking for a GPU that is not
there is a :class:`DeviceError` naming what torch sees, never a CUDA traceback from deep inside a training loop.
Numerics do not depend on the device: fake quantization always computes in float32 (see
:mod:`automq.numerics.formats`), so a candidate's formats round the same values the same way on the CPU and a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from automq.errors import AutomqError

__all__ = ["DEVICE_CHOICES", "DeviceError", "module_device", "resolve_device"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(AutomqError):
    """A ``--device`` that is malformed or names a GPU this machine does not have."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``spec`` names; ``auto`` and ``None`` give ``cuda`` when a GPU is visible, else ``cpu``.

    ``cuda`` means the current GPU (``cuda:0`` unless ``CUDA_VISIBLE_DEVICES`` or Ray chose another); ``cuda:N``
    must be one of the visible GPUs. Anything else (``mps``, ``gpu``, ``cuda:x``) is refused with the choices.
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {spec!r} is not a device: give {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"--device {spec!r}: automq runs on {DEVICE_CHOICES}, not on {device.type}")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise DeviceError(f"--device {spec!r}: torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto")
    if device.index is not None and device.index >= visible:
        raise DeviceError(f"--device {spec!r}: torch sees {visible} CUDA GPU(s), cuda:0 to cuda:{visible - 1}")
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (the CPU for a module without any): where its inputs must live."""
    first = next(module.parameters(), None)
    return torch.device("cpu") if first is None else first.device
