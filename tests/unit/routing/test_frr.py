"""FrrInstance without starting anything: the exact command lines, and that stop() never signals a
process this instance did not start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.routing.frr import FrrInstance, daemons_for_config


def test_daemon_argv_keeps_everything_in_the_state_dir(tmp_path: Path) -> None:
    inst = FrrInstance("hub", tmp_path, netns="lab-hub", daemons=("bgpd", "bfdd", "zebra"))
    assert inst.daemons == ("zebra", "bfdd", "bgpd")  # zebra first
    d = str(tmp_path.resolve())
    assert inst.daemon_argv("zebra") == [
        "ip", "netns", "exec", "lab-hub", "/usr/lib/frr/zebra", "-d", "-f", "/dev/null",
        "-i", f"{d}/zebra.pid", "--vty_socket", d, "-P", "0", "--log", f"file:{d}/zebra.log",
        "-z", f"{d}/zserv.api"]
    bfdd = inst.daemon_argv("bfdd")
    assert bfdd[-2:] == ["--bfdctl", f"{d}/bfdd.sock"] and "/etc/frr" not in " ".join(bfdd)


def test_vtysh_argv(tmp_path: Path) -> None:
    inst = FrrInstance("ce", tmp_path, netns="lab-ce")
    d = str(tmp_path.resolve())
    assert inst.vtysh_argv("show bgp summary") == [
        "ip", "netns", "exec", "lab-ce", "vtysh", "--vty_socket", d, "--config_dir", d,
        "-c", "show bgp summary"]
    assert FrrInstance("ce", tmp_path).vtysh_argv()[0] == "vtysh"


@pytest.mark.parametrize("daemons", [("bgpd",), ("zebra", "ospfd", "bgpd")])
def test_daemon_set_checked(tmp_path: Path, daemons: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="zebra and bgpd"):
        FrrInstance("x", tmp_path, daemons=daemons)


def test_foreign_pid_is_never_signalled(tmp_path: Path) -> None:
    inst = FrrInstance("x", tmp_path)
    # A pid file naming a live process that is not this instance's daemon (ourselves).
    inst.pid_path("bgpd").write_text(f"{os.getpid()}\n")
    inst.pid_path("zebra").write_text("not a pid\n")
    assert inst.running_daemons() == {}
    inst.stop(timeout=0.1)  # must return without signalling us
    assert not inst.pid_path("bgpd").exists()


def test_daemons_for_a_hand_written_config() -> None:
    assert daemons_for_config("router bgp 65001\n neighbor 10.0.0.1 remote-as 12076\n") == ("zebra", "bgpd")
    conf = "ip route 10.9.0.0/16 blackhole\nrouter bgp 65001\n neighbor 10.0.0.1 bfd\n"
    assert daemons_for_config(conf) == ("zebra", "staticd", "bfdd", "bgpd")
    assert "bfdd" in daemons_for_config("bfd\n profile fast\n exit\nexit\n")
