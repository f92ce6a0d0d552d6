"""The parts of ipsecemu.net that need no root: error families, argv building, input checks."""

from __future__ import annotations

import pytest

from ipsecemu.base.errors import SystemSetupError
from ipsecemu.net import NetError
from ipsecemu.net.netns import NetnsError, entered, ns_argv, pids_in_netns, sysctl
from ipsecemu.net.tun import TunError, open_tun


def test_error_family() -> None:
    assert issubclass(NetError, SystemSetupError)
    assert issubclass(NetnsError, NetError) and issubclass(TunError, NetError)
    assert NetError.exit_status == SystemSetupError.exit_status


def test_ns_argv() -> None:
    assert ns_argv("lab-a", "ping", "-c1", "x") == ["ip", "netns", "exec", "lab-a", "ping", "-c1", "x"]
    assert ns_argv(None, "true") == ["true"]


def test_entered_none_is_a_no_op() -> None:
    with entered(None):
        pass


def test_entered_missing_netns() -> None:
    with pytest.raises(NetnsError, match="no netns named 'ipsecemu-no-such-ns'"), entered("ipsecemu-no-such-ns"):
        pytest.fail("must not run the block")


def test_pids_in_missing_netns() -> None:
    assert pids_in_netns("ipsecemu-no-such-ns") == []


def test_sysctl_error_is_one_line() -> None:
    sysctl(None, [])  # nothing to do: no process started
    with pytest.raises(NetnsError, match="sysctl"):
        sysctl(None, [("net.ipsecemu.no_such_key", "1")])


@pytest.mark.parametrize("name", ["", "x" * 16])
def test_open_tun_checks_name_first(name: str) -> None:
    with pytest.raises(TunError, match="must be 1-15 characters"):
        open_tun(name)
