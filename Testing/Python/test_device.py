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
    if not torch.cuda.is_available():
        with pytest.raises(RegistrationError, match="no CUDA GPU"):
            resolve_device("cuda")
