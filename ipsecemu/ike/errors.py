"""IKE errors, h11 style: who is at fault decides the class."""

from __future__ import annotations

from ipsecemu.base.errors import ProtocolError


class IkeError(ProtocolError):
    """Base class of every IKE error (the ProtocolError family of ipsecemu.base.errors)."""


class LocalProtocolError(IkeError):
    """The caller misused the API (wrong state, unknown Child SA, bad config)."""


class RemoteProtocolError(IkeError):
    """The peer sent something wrong.  ``notify`` is the IKE notify type to answer with
    (0 = drop silently), ``notify_data`` its data."""

    def __init__(self, message: str, notify: int = 0, notify_data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify
        self.notify_data = notify_data


class ParseError(RemoteProtocolError):
    """A message could not be decoded (truncated, length lie, bad version...)."""

    def __init__(self, message: str, notify: int = 7, notify_data: bytes = b"") -> None:
        # 7 = INVALID_SYNTAX
        super().__init__(message, notify, notify_data)


class IntegrityError(RemoteProtocolError):
    """The SK payload failed its integrity check; RFC 7296 says drop silently."""

    def __init__(self, message: str = "SK payload integrity check failed") -> None:
        super().__init__(message, 0)
