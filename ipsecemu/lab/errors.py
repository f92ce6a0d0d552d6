"""Errors of ``lab up``, shared by the builder and the services it starts (so neither imports the other)."""

from ipsecemu.base.errors import LabError, ServiceError


class BuildError(LabError):
    """A step of ``lab up`` failed; the lab has been rolled back."""


__all__ = ["BuildError", "MacsecServiceError"]


class MacsecServiceError(ServiceError):
    """A MACsec link of the lab is misconfigured or did not come up."""
