"""Which devices exist and which precision runs on each (`auto`: calibration.py decides by
timing, not by CPU flags)."""

from __future__ import annotations

import threading

import torch

from nst_core.errors import ParamsError


def devices_for(setting: str) -> list[str]:
    """The concrete devices a run may spread over: every GPU for auto/cuda, else one."""
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if setting == "auto":
        return ["mps"] if torch.backends.mps.is_available() else ["cpu"]
    return [str(resolve_device(setting))]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError([f"device: {name} requested but no CUDA device is available"])
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ParamsError([f"device: {name} does not exist ({torch.cuda.device_count()} GPUs)"])
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(["device: mps requested but not available on this machine"])
    return device


def resolve_precision(precision: str, device: torch.device, override: str | None = None) -> str:
    """The precision a job runs in: as asked, or for `auto` the `override` given (the
    settings' NST_PRECISION) or what calibration measured on this device."""
    if precision == "auto" and override:
        precision = override
    if precision != "auto":
        if precision == "bf16" and device.type == "mps":
            raise ParamsError(["precision: bf16 autocast is not supported on mps; use fp32"])
        return precision
    return _auto(device)


def _auto(device: torch.device) -> str:
    """What `auto` means on `device`, decided once per process (calibration.py)."""
    key = str(device)
    with _AUTO_LOCK:  # units on threads: one calibration, not one each
        if key not in _AUTO:
            from nst_core.engine.calibration import decide

            _AUTO[key] = decide(device)["precision"]
        return _AUTO[key]


_AUTO: dict[str, str] = {}
_AUTO_LOCK = threading.Lock()
