"""Device choice, resolved once at the edge (CLI or worker) and passed down."""

from __future__ import annotations

import platform
import re

import torch

from hpsearch.errors import DeviceError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def parse_device(spec: str) -> str:
    """`spec` as `auto|cpu|cuda|cuda:N|mps` (lower case), whatever this machine has; the CLI's
    `--device` type, so a misspelt device is a usage error before anything is resolved."""
    spec = spec.strip().lower()
    if spec not in ("auto", "cpu", "mps") and re.fullmatch(r"cuda(?::\d+)?", spec) is None:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICE_HELP}")
    return spec


def resolve_device(spec: str) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a device that exists here, or say why not.

    `auto` prefers CUDA, then Apple MPS, then the CPU.
    """
    spec = parse_device(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError(
                "--device mps was requested but Apple's MPS backend is not available on this "
                f"machine ({platform.system()} {platform.machine()}, torch {torch.__version__}); "
                "use --device auto or --device cpu"
            )
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    assert match is not None  # parse_device let only cuda and cuda:N through
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise DeviceError(
            f"--device {spec} was requested but no CUDA GPU is available here (torch "
            f"{torch.__version__}, {build}); use --device auto or --device cpu, or check "
            "nvidia-smi and CUDA_VISIBLE_DEVICES"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"--device {spec} was requested but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1}); pick one of those"
        )
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """A human-readable name recorded with every trial, e.g. 'NVIDIA H100 80GB HBM3'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
