"""Which devices exist and which precision pays on each.

Measured, not assumed: on CPUs without AMX, bf16 autocast runs VGG19 several times slower
than fp32, so `auto` picks bf16 only on CUDA devices with bf16 and on CPUs with AMX.
"""

from __future__ import annotations

import functools

import torch

from nst_core.errors import ParamsError


def devices_for(setting: str) -> list[str]:
    """The concrete devices a batch may spread over: every GPU for auto/cuda, else one."""
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


@functools.cache
def cpu_has_amx() -> bool:
    """bf16 pays on CPUs with AMX tiles; without them it runs several times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any("amx_bf16" in line for line in cpuinfo if line.startswith("flags"))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "bf16" and device.type == "mps":
            raise ParamsError(["precision: bf16 autocast is not supported on mps; use fp32"])
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_amx() else "fp32"
    return "fp32"
