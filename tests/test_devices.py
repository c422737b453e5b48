from __future__ import annotations

import pytest
import torch

from hpsearch.devices import resolve_device
from hpsearch.errors import DeviceError


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, two_gpus: None) -> None:
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_explicit_devices_are_honoured_or_refused(two_gpus: None) -> None:
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(DeviceError, match="has 2 CUDA device.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_missing_backends_are_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU is available.*--device cpu"):
        resolve_device("cuda:0")
    with pytest.raises(DeviceError, match="MPS backend is not available"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
