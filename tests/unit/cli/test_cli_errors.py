"""The CLI edge: every IpsecemuError family ends a command with one stderr line ``ipsecemu: <message>``
and the family's exit status; Ctrl-C is 130; click's usage errors stay 2."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ipsecemu.base import errors
from ipsecemu.cli import cli
from ipsecemu.commands.base import Command, Group

FAMILIES = [
    (errors.ConfigError, 2), (errors.InputError, 3), (errors.ProtocolError, 4), (errors.NeedsRootError, 5),
    (errors.SystemSetupError, 6), (errors.ServiceError, 7), (errors.LabError, 8), (errors.CheckFailed, 9),
    (errors.BenchError, 10),
]


def _raising(exc: BaseException) -> click.Group:
    @click.group(cls=Group)
    def top() -> None:
        pass

    @top.group()
    def sub() -> None:
        pass

    @sub.command()
    def boom() -> None:
        raise exc

    return top


def test_every_family_has_its_own_status() -> None:
    families = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.IpsecemuError)}
    assert families - {errors.IpsecemuError} == {f for f, _ in FAMILIES}
    statuses = [s for _, s in FAMILIES]
    assert len(set(statuses)) == len(statuses) and errors.EXIT_INTERRUPTED not in statuses


@pytest.mark.parametrize(("family", "status"), FAMILIES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_family_maps_to_status_and_one_line(family: type[errors.IpsecemuError], status: int) -> None:
    r = CliRunner().invoke(_raising(family("it went\nwrong")), ["sub", "boom"])
    assert r.exit_code == status == family.exit_status
    assert r.stderr == "ipsecemu: it went wrong\n" and r.stdout == ""


def test_subclass_uses_its_family_status() -> None:
    from ipsecemu.ike.errors import LocalProtocolError
    from ipsecemu.pcap.keyfile import KeyFileError

    assert CliRunner().invoke(_raising(LocalProtocolError("x")), ["sub", "boom"]).exit_code == 4
    assert CliRunner().invoke(_raising(KeyFileError("x")), ["sub", "boom"]).exit_code == 3


def test_interrupt_is_130() -> None:
    r = CliRunner().invoke(_raising(KeyboardInterrupt()), ["sub", "boom"])
    assert r.exit_code == errors.EXIT_INTERRUPTED == 130 and r.stderr == "ipsecemu: interrupted\n"


def test_usage_errors_stay_2() -> None:
    r = CliRunner().invoke(_raising(errors.LabError("x")), ["sub", "boom", "--nope"])
    assert r.exit_code == errors.EXIT_USAGE == 2 and "No such option" in r.stderr


def test_other_exceptions_are_not_swallowed() -> None:
    r = CliRunner().invoke(_raising(ZeroDivisionError("bug")), ["sub", "boom"])
    assert isinstance(r.exception, ZeroDivisionError)  # a bug keeps its traceback


def test_command_class_alone() -> None:
    @click.command(cls=Command)
    def one() -> None:
        raise errors.InputError("bad file")

    r = CliRunner().invoke(one, [])
    assert (r.exit_code, r.stderr) == (3, "ipsecemu: bad file\n")


def test_every_top_level_group_maps() -> None:
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        assert isinstance(cmd, (Group, Command)), name


def test_real_commands(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections: [1\n")
    r = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert r.exit_code == 2 and r.stderr.startswith("ipsecemu: ") and r.stderr.count("\n") == 1
    keys = tmp_path / "esp_sa"
    keys.write_text('"IPv4","1.1.1.1","2.2.2.2","0x100","ROT13","0x00","NULL",""\n')
    cap = tmp_path / "in.pcap"
    cap.write_bytes(b"")
    r = CliRunner().invoke(cli, ["pcap", "decrypt", str(cap), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(keys)])
    assert r.exit_code == 3 and r.stderr.startswith("ipsecemu: ") and "Traceback" not in r.output
