"""The one exception tree of ipsecemu.

Every error the project raises on purpose derives from :class:`IpsecemuError`; a family class says what
kind of failure it is and carries the process exit status the CLI uses for it, so the same kind of error
ends every command the same way (table in the README, "Exit status").  Anything else escaping to the CLI
is a bug.
"""

from __future__ import annotations


class IpsecemuError(Exception):
    """Root of every error ipsecemu raises on purpose.  ``exit_status``: what the CLI exits with."""

    exit_status: int = 1


class ConfigError(IpsecemuError, ValueError):
    """A configuration value (YAML, JSON, command-line option) is invalid; the message names the file,
    line and field where there is one."""

    exit_status = 2


class InputError(IpsecemuError, ValueError):
    """An input file other than configuration (capture, key file) cannot be used."""

    exit_status = 3


class ProtocolError(IpsecemuError):
    """A protocol core refused an operation or a message (IKE, MKA)."""

    exit_status = 4


class NeedsRootError(IpsecemuError, PermissionError):
    """The operation needs root (network namespaces, tun/tap, raw sockets)."""

    exit_status = 5


class SystemSetupError(IpsecemuError, RuntimeError):
    """The host could not do what was asked: a netns, link, tun/tap, process or socket operation failed,
    or a required program is missing."""

    exit_status = 6


class ServiceError(IpsecemuError, RuntimeError):
    """A daemon (ipsecemu gateway, MACsec link, charon, routing daemon) failed to start, answer or stop."""

    exit_status = 7


class LabError(IpsecemuError, RuntimeError):
    """A lab could not be built, found, changed or torn down."""

    exit_status = 8


class CheckFailed(IpsecemuError):
    """A verification ran and its result is negative (smoke check, audit mismatch, interop case, bench
    gate)."""

    exit_status = 9


class BenchError(IpsecemuError, RuntimeError):
    """A benchmark could not run (missing tool, setup failure)."""

    exit_status = 10


# Exit statuses the CLI uses that are not errors of this tree.
EXIT_USAGE = 2  # click's own status for a bad command line (kept equal to ConfigError's on purpose)
EXIT_INTERRUPTED = 130
