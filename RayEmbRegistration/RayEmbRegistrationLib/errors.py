"""The errors a registration reports to its user.

Owns: the errors a registration reports to its user.

``RegistrationError`` (the registration cannot be done or would not be trustworthy) and its subclass
``ModelUnavailable`` (no usable network). Their messages say what is wrong and what to do."""

from __future__ import annotations

__all__ = ["RegistrationError", "ModelUnavailable"]


class RegistrationError(ValueError):
    """The registration cannot be done or would not be trustworthy (message says why and what to do)."""


class ModelUnavailable(RegistrationError):
    """No trained ray-embedding network could be loaded (landmark detection is not available)."""
