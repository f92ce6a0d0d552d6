"""One responder address, two connections (one per peer), as a lab renders them: both accept
any identity (PSK, no ``remote_id``), so only the peers' addresses tell them apart.  IKE_AUTH
used to re-select the config by identity alone and handed the second peer the first
connection (its selectors, its PSK; INITIAL_CONTACT then tore down the first peer's SA)."""

from __future__ import annotations

import logging

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.ike.states import IkeState

from support.ike_pair import events, seeded

GWA, GWB, GWC = ("192.0.2.1", 500), ("192.0.2.6", 500), ("192.0.2.10", 500)
IKE = "aes128-sha256-x25519"
NETS = {"gwa": "10.1.0.0/24", "gwb": "10.2.0.0/24", "gwc": "10.3.0.0/24"}
ADDR = {"gwa": GWA, "gwb": GWB, "gwc": GWC}


def conn(me: str, peer: str, psk: str, *, remote_addr: bool = True) -> IkeSaConfig:
    return IkeSaConfig.simple(f"{me}-{peer}" if me == "gwa" else f"gwa-{me}", psk, ADDR[me][0], None, ike=IKE,
                              local_ts=NETS[me], remote_ts=NETS[peer],
                              remote_addr=ADDR[peer] if remote_addr else None)


def lab(psks: dict[str, str]) -> tuple[IkeEndpoint, IkeEndpoint, IkeEndpoint, LoopbackNet]:
    gwa = IkeEndpoint([conn("gwa", "gwb", psks["gwb"]), conn("gwa", "gwc", psks["gwc"])], GWA, rng=seeded(1))
    gwb = IkeEndpoint([conn("gwb", "gwa", psks["gwb"])], GWB, rng=seeded(2))
    gwc = IkeEndpoint([conn("gwc", "gwa", psks["gwc"])], GWC, rng=seeded(3))
    return gwa, gwb, gwc, LoopbackNet([gwa, gwb, gwc])


@pytest.mark.parametrize("psks", [{"gwb": "same", "gwc": "same"}, {"gwb": "psk-b", "gwc": "psk-c"}],
                         ids=["shared-psk", "own-psk"])
@pytest.mark.parametrize("first", ["gwb", "gwc"])
def test_responder_serves_both_peers_by_address(psks: dict[str, str], first: str) -> None:
    gwa, gwb, gwc, net = lab(psks)
    inits = {"gwb": gwb, "gwc": gwc}
    sas = {}
    for who in (first, "gwc" if first == "gwb" else "gwb"):
        sas[who] = inits[who].initiate("gwa-" + who, net.now)
        net.run()
    for who, sa in sas.items():
        assert sa.state == IkeState.ESTABLISHED, (who, sa.last_error)
        ours = gwa.find(sa.spi_r)
        assert ours is not None and ours.state == IkeState.ESTABLISHED
        assert ours.config.name == "gwa-" + who and ours.remote[0] == ADDR[who][0]
    kids = [e for e in events(gwa) if isinstance(e, ev.ChildSaEstablished)]
    assert sorted((k.conn, k.peer[0], str(k.keys.remote_ts[0])) for k in kids) == [
        ("gwa-gwb", GWB[0], NETS["gwb"]), ("gwa-gwc", GWC[0], NETS["gwc"])]
    assert gwa.counters.get("replaced_by_initial_contact", 0) == 0
    assert gwa.counters.get("ambiguous_config", 0) == 0


def test_address_bound_config_wins_over_any_address() -> None:
    """A config naming the peer's address beats one accepting any address, both any identity."""
    gwa = IkeEndpoint([conn("gwa", "gwb", "p", remote_addr=False), conn("gwa", "gwc", "p")], GWA, rng=seeded(1))
    gwc = IkeEndpoint([conn("gwc", "gwa", "p")], GWC, rng=seeded(3))
    net = LoopbackNet([gwa, gwc])
    sa = gwc.initiate("gwa-gwc", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED and gwa.find(sa.spi_r).config.name == "gwa-gwc"


def test_ambiguous_configs_are_logged_naming_both(caplog: pytest.LogCaptureFixture) -> None:
    """Two connections nothing tells apart (any address, any identity): the one that served
    IKE_SA_INIT stays, and one log line names both candidates."""
    gwa = IkeEndpoint([conn("gwa", "gwb", "p", remote_addr=False), conn("gwa", "gwc", "p", remote_addr=False)],
                      GWA, rng=seeded(1))
    gwc = IkeEndpoint([conn("gwc", "gwa", "p")], GWC, rng=seeded(3))
    net = LoopbackNet([gwa, gwc])
    with caplog.at_level(logging.WARNING, logger="ipsecemu.ike"):
        sa = gwc.initiate("gwa-gwc", 0.0)
        net.run()
    assert sa.state == IkeState.ESTABLISHED
    assert gwa.counters["ambiguous_config"] == 1
    lines = [r.getMessage() for r in caplog.records if "all match" in r.getMessage()]
    assert len(lines) == 1 and "gwa-gwb" in lines[0] and "gwa-gwc" in lines[0] and "192.0.2.10" in lines[0]
