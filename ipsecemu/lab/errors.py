"""Errors of ``lab up``, shared by the builder and the services it starts (so neither imports the other)."""

from ipsecemu.base.errors import LabError


class BuildError(LabError):
    """A step of ``lab up`` failed; the lab has been rolled back."""


__all__ = ["BuildError"]
