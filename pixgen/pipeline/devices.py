"""Choosing the device a run uses."""

from __future__ import annotations

import torch

from pixgen.errors import ConfigError

DEVICE_HELP = "expected auto, cpu, cuda, cuda:N or mps"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid value {name!r} for 'device': {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda", "mps") or (device.type != "cuda" and device.index is not None):
        raise ConfigError(f"invalid value {name!r} for 'device': {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} was asked for, but only {torch.cuda.device_count()} "
                              "CUDA device(s) are here")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r} was asked for, but MPS is not available here")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
