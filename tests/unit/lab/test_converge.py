"""lab/converge.py without a running lab: which BGP sessions each failure of er-vwan.yaml must take
down, and when a view counts as 'applied' or 'restored'."""

from __future__ import annotations

from ipsecemu.lab.check import check_file
from ipsecemu.lab.converge import View, _back, _broken, touched

from support.paths import REPO  # noqa: E402

TOPO = check_file(REPO / "netns-labs" / "er-vwan.yaml")
UP = "Established"
# the S1 lab's sessions as FRR lists them (node, peer): ER eBGP, hub iBGP to the instances, in-tunnel BGP
BASE = View(sessions={
    ("ce", "192.168.100.2"): (UP, 2, 2, 100), ("ce", "192.168.100.6"): (UP, 2, 2, 100),
    ("ce", "169.254.21.1"): (UP, 2, 1, 100), ("ce", "169.254.22.1"): (UP, 2, 1, 100),
    ("msee1", "192.168.100.1"): (UP, 2, 2, 100), ("msee1", "192.168.101.2"): (UP, 2, 2, 100),
    ("hub", "192.168.101.1"): (UP, 2, 2, 100), ("hub", "10.51.230.4"): (UP, 1, 2, 100),
    ("hub", "10.51.230.5"): (UP, 1, 2, 100), ("hubgw0", "169.254.21.2"): (UP, 1, 2, 100),
    ("hubgw0", "10.51.230.1"): (UP, 2, 1, 100), ("hubgw1", "10.51.230.1"): ("Active", 0, 0, 0),
}, routes={"hub": frozenset({("10.0.1.0/24", ("10.51.230.4", "10.51.230.5"))})})


def test_instance_down_watches_its_peers_not_its_own_sessions() -> None:
    assert touched(TOPO, BASE, frozen=("hubgw0",)) == {("ce", "169.254.21.1"), ("hub", "10.51.230.4")}


def test_terminated_tunnel_watches_the_bgp_inside_it() -> None:
    assert touched(TOPO, BASE, conn="ce-hubgw0") == {("ce", "169.254.21.1"), ("hubgw0", "169.254.21.2")}


def test_link_down_watches_the_session_across_it_only_if_established() -> None:
    assert touched(TOPO, BASE, link=("ce", "msee1")) == {("ce", "192.168.100.2"), ("msee1", "192.168.100.1")}
    # a session not Established at the baseline has nothing to lose
    base = View(sessions={**BASE.sessions, ("msee1", "192.168.101.2"): ("Active", 0, 0, 0)})
    assert touched(TOPO, base, link=("hub", "msee1")) == {("hub", "192.168.101.1")}
    assert touched(TOPO, BASE, link=("hub", "msee2")) == set()  # no session listed across it


def test_broken_needs_every_watched_session_down_or_reestablished() -> None:
    keys = {("ce", "169.254.21.1"), ("hub", "10.51.230.4")}
    now = View(sessions=dict(BASE.sessions))
    assert not _broken(now, BASE, keys)
    now.sessions[("ce", "169.254.21.1")] = ("Connect", 0, 0, 100)
    assert not _broken(now, BASE, keys)  # the hub still has it
    now.sessions[("hub", "10.51.230.4")] = (UP, 1, 2, 107)  # flapped and came back between two polls
    assert _broken(now, BASE, keys)
    del now.sessions[("hub", "10.51.230.4")]  # its node did not answer: not a sign
    assert not _broken(now, BASE, keys)


def test_back_needs_sessions_and_routes_of_the_baseline() -> None:
    now = View(sessions={k: (s[0], 0, 0, 999) for k, s in BASE.sessions.items()}, routes=dict(BASE.routes))
    assert _back(now, BASE)  # counts and epochs may differ
    now.routes["hub"] = frozenset({("10.0.1.0/24", ("10.51.230.5",))})  # ECMP not back yet
    assert not _back(now, BASE)
    now.routes = dict(BASE.routes)
    now.sessions[("ce", "169.254.22.1")] = ("OpenConfirm", 0, 0, 0)
    assert not _back(now, BASE)
    now.sessions[("ce", "169.254.22.1")] = (UP, 0, 0, 0)
    now.silent.add("msee2")
    assert not _back(now, BASE)
