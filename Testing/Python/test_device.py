"""Device resolution (``device.py``)."""

import pytest
import torch

from RayEmbRegistrationLib.device import resolve_device
from RayEmbRegistrationLib.errors import RegistrationError


def test_resolve_device():
    assert resolve_device("cpu") == "cpu" and resolve_device("CPU") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RegistrationError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="task"):
        resolve_device("auto", task="infer")
    if not torch.cuda.is_available():
        with pytest.raises(RegistrationError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_auto_registers_on_the_cpu_where_a_gpu_exists(monkeypatch):
    """``auto``: training on the GPU, registration on the CPU (device.TASKS: measured faster there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("auto", task="train") == "cuda"
    assert resolve_device("auto", task="register") == "cpu"
    assert resolve_device("cuda", task="register") == "cuda"  # asked for explicitly: as asked
    from RayEmbRegistrationLib.options import RegistrationOptions
    from RayEmbRegistrationLib.registration.pipeline import Registrar

    assert Registrar.device.fget(type("R", (), {"options": RegistrationOptions()})()) == "cpu"
