"""Errors of ``lab up``, shared by the builder and the services it starts (so neither imports the other)."""

from pathlib import Path

from ipsecemu.base.errors import LabError, ServiceError


class BuildError(LabError):
    """A step of ``lab up`` failed; the lab has been rolled back.  ``logs``: where the rollback kept
    the lab's logs and generated configs (the state dir itself is gone)."""

    def __init__(self, msg: str, logs: Path | None = None) -> None:
        super().__init__(msg)
        self.logs = logs


class LabKept(LabError):
    """``lab up --keep-on-failure`` failed and left the lab as it was, for debugging."""


__all__ = ["BuildError", "LabKept", "MacsecServiceError"]


class MacsecServiceError(ServiceError):
    """A MACsec link of the lab is misconfigured or did not come up."""
