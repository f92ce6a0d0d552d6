"""IKE against a real strongSwan charon in transport mode with port selectors (issue 12, S5):
USE_TRANSPORT_MODE and TCP/8080 traffic selectors, with ``ipsecemu gateway run`` as initiator (an
on-demand ``start_action: trap`` connection triggered by a TCP connect to 8080, so its TSi/TSr start
with the packet's 5-tuple, RFC 7296 section 2.9) and as responder (charon initiates).

Negotiation only: strongSwan's userspace IPsec (kernel-libipsec, the only IPsec stack charon has
here: this kernel's XFRM has no ciphers) has no transport-mode data path -- charon agrees on
transport mode, then refuses to install the SA ("IPsec SA: unsupported mode") and answers
NO_PROPOSAL_CHOSEN (as responder) or deletes the Child SA (as initiator).  So the verdicts are
the exchange as both sides saw it: charon's log (level 2) shows our USE_TRANSPORT_MODE notify, the
selectors with ports and how it narrowed them, and that it got as far as installing a transport SA;
ours shows the transport Child SA with charon's port selectors.  The transport data path is tested
ipsecemu <-> ipsecemu (test_gateway_trap.py, test_native_transport.py).  Needs root and charon."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ipsecemu.lab.harness import pair_topology
from ipsecemu.lab.netns import ns_exec, wait_for
from ipsecemu.strongswan.charon import Charon, charon_available
from ipsecemu.strongswan.conn import Child, Conn
from ipsecemu.strongswan.vici import CharonError

from support.gateway_lab import Gw

NO_CHARON = charon_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]

PSK = "hostgw-charon-transport-psk"
IKE, ESP = "aes128-sha256-modp2048", "3des-sha1"  # ESP: the S5 seed's 3DES-SHA1
L, R = "192.0.2.1", "192.0.2.2"
HTTP_ALT = "http-alt"  # how charon prints port 8080


def our_config(gw: Gw, start: str) -> None:
    trap = "    trap_fallback: drop\n    trap_timeout: 10\n" if start == "trap" else ""
    gw.cfg.write_text(f"""\
node: left
state_dir: {gw.state}
local_addresses: [{L}]
datapath: {{encapsulation: esp}}
connections:
  s5:
    remote_address: {R}
    local_id: left
    remote_id: right
    psk: {PSK}
    mode: transport
    ike_proposals: {IKE}
    esp_proposals: {ESP}
    local_ts: ["{L}/32[tcp]"]
    remote_ts: ["{R}/32[tcp/8080]"]
    start_action: {start}
{trap}    dpd: {{interval: 0}}
    tunnel: {{name: {gw.tun}, table: 108}}
""")


def charon_conn() -> Conn:
    child = Child(name="s5", local_ts=(f"{R}/32[tcp/8080]",), remote_ts=(f"{L}/32[tcp]",), esp_proposals=(ESP,),
                  mode="transport")
    return Conn(name="s5", local_addrs=(R,), remote_addrs=(L,), local_id="right", remote_id="left", psk=PSK,
                proposals=(IKE,), children=(child,))


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init-trap", "charon-init"])
def test_transport_mode_with_port_selectors_against_charon(unique_name: str, tmp_path: Path,
                                                             we_initiate: bool) -> None:
    prefix = "hgc" + unique_name[1:6]
    with pair_topology(prefix) as topo:
        gl, gr = topo.gateways
        charon = Charon(gr, log_level=2)  # level 2: the selectors charon chose, and from what
        gw = Gw(gl, tmp_path / "left.yaml", tmp_path / "left", prefix + "t")
        try:
            charon.start()
            charon.load(charon_conn())
            our_config(gw, "trap" if we_initiate else "listen")
            gw.start()
            clog = lambda: charon.log_file.read_text()  # noqa: E731
            if we_initiate:
                # the host policy's steering: TCP to 8080 into table 108 -> our tun -> IKE on demand
                ns_exec(gl, "ip", "rule", "add", "priority", "100", "ipproto", "tcp", "dport", "8080", "table", "108")
                subprocess.run(["ip", "netns", "exec", gl, "curl", "-s", "--max-time", "1", f"http://{R}:8080/"],
                               capture_output=True, timeout=15)
                assert wait_for(lambda: "IPsec SA: unsupported mode" in clog(), 10), gw.log() + clog()[-3000:]
                m = re.search(rf"s5: trap: packet {L}:(\d+) -> {R}:8080 proto 6: initiating to {R} "
                              rf"\(TSi {L}/32\[6/(\d+)\],{L}/32\[6/0-65535\], TSr {R}/32\[6/8080\]\)", gw.log())
                assert m and m.group(1) == m.group(2), gw.log()
                sport = m.group(1)
                text = clog()
                assert re.search(r"parsed IKE_AUTH request 1 \[ .*N\(USE_TRANSP\) SA TSi TSr \]", text), text[-3000:]
                # charon narrowed to the packet's selectors first (RFC 7296 2.9) and kept the port
                assert (f"looking for a child config for {R}/32[tcp/{HTTP_ALT}] === {L}/32[tcp/{sport}] "
                        f"{L}/32[tcp]") in text
                assert f"received: {L}/32[tcp/{sport}] => match: {L}/32[tcp/{sport}]" in text
                assert f"received: {R}/32[tcp/{HTTP_ALT}] => match: {R}/32[tcp/{HTTP_ALT}]" in text
                assert "selected proposal: ESP:3DES_CBC/HMAC_SHA1_96/NO_EXT_SEQ" in text
                assert "generating IKE_AUTH response 1 [ IDr AUTH N(NO_PROP) ]" in text  # libipsec: no transport
                assert wait_for(lambda: "traffic dropped, never sent in clear (trap_fallback drop" in gw.log(), 5)
                print(f"\n[charon transport] ours -> charon: TSi {L}/32[tcp/{sport}] (the SYN's) + {L}/32[tcp], "
                      f"TSr {R}/32[tcp/8080], USE_TRANSPORT_MODE; charon narrowed to the packet's first, then "
                      "refused to install a transport SA (libipsec)")
            else:
                with pytest.raises(CharonError, match="establishing CHILD_SA 's5' failed"):
                    charon.initiate(child="s5", ike="s5")  # charon cannot install what it agreed on
                text = clog()
                assert re.search(r"parsed IKE_AUTH response 1 \[ .*N\(USE_TRANSP\) SA TSi TSr", text), text[-3000:]
                assert f"received: {L}/32[tcp] => match: {L}/32[tcp]" in text
                assert f"received: {R}/32[tcp/{HTTP_ALT}] => match: {R}/32[tcp/{HTTP_ALT}]" in text
                assert "IPsec SA: unsupported mode" in text
                want = (f"s5: child 1 ({L}/32[6/0-65535] === {R}/32[6/8080]) with {R}: installed SA in ")
                assert want in gw.log() and "(3des-sha1, transport mode, ESP" in gw.log(), gw.log()
                # charon deletes the Child SA it could not install; ours goes with it
                assert wait_for(lambda: "deleted (remote)" in gw.log(), 5), gw.log()
                print(f"\n[charon transport] charon -> ours: TSi {R}/32[tcp/8080] TSr {L}/32[tcp], we answered "
                      "USE_TRANSPORT_MODE and installed a transport SA; charon then refused to install its own")
        finally:
            gw.stop()
            charon.stop()
