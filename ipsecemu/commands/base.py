"""click classes every ipsecemu command and group uses, so every command ends the same way.

An :class:`~ipsecemu.base.errors.IpsecemuError` escaping a command becomes one line on stderr,
``ipsecemu: <message>``, and the process exits with the error family's ``exit_status`` (the table
is in docs/notes-core.md and the README).  Ctrl-C exits 130 after ``ipsecemu: interrupted``.  click's
own usage errors keep click's status 2.
"""

from __future__ import annotations

from typing import IO, Any

import click

from ipsecemu.base.errors import EXIT_INTERRUPTED, IpsecemuError


class ExitWithMessage(click.ClickException):
    """What an IpsecemuError becomes at the CLI edge: click prints it with :meth:`show` and exits."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it a class attribute

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"ipsecemu: {self.format_message()}", err=True)


def _invoke_mapped(invoke: Any, ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except IpsecemuError as exc:
        raise ExitWithMessage(" ".join(str(exc).split()) or type(exc).__name__, exc.exit_status) from exc
    except KeyboardInterrupt:
        raise ExitWithMessage("interrupted", EXIT_INTERRUPTED) from None


class Command(click.Command):
    """A click command that maps IpsecemuError and Ctrl-C to one stderr line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_mapped(super().invoke, ctx)


class Group(click.Group):
    """A click group with the same mapping; its subcommands and subgroups get these classes too."""

    command_class = Command
    group_class = type  # click: subgroups are of this same class

    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_mapped(super().invoke, ctx)
