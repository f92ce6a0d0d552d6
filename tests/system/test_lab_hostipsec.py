"""Host IPsec policy in a lab (issue 12, S5), on the shipped ``netns-labs/er-transport-8080.yaml`` (root).

Verdicts come from captures on the ER links:

* require (the shipped lab): ``lab audit`` passes -- host1 <-> vm1 TCP 8080 both ways and vm1 <-> vm2
  8080 encrypted, 80 and ping clear, host2 -> vm1:8080 blocked; every ESP packet on the ER link is raw
  ESP (protocol 50) whose decrypted next header is 6 (transport framing, not 4), decrypted with the
  keys the gateways export; no TCP 8080 segment crosses in clear, and nothing of host2's 8080 comes
  back.  TCP 8080 throughput host1 -> vm1 with 3DES-SHA1 (iperf3 -p 8080) is printed.
* request (a variant written here, with HTTP servers): host2 is answered in clear; host1's HTTP GET to
  vm1:8080 crosses as ESP that decrypts to the HTTP exchange; AES-GCM first, its iperf3 rate printed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.dataplane import backend
from ipsecemu.lab.capture import export_keys
from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.pcap.uat import EspSaRow, read_esp_sa

from support.paths import REPO  # noqa: E402

scapy_all = pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP  # noqa: E402

LAB = REPO / "netns-labs" / "er-transport-8080.yaml"
ADDR = {"host1": "10.2.27.10", "host2": "10.2.27.20", "vm1": "10.0.1.4", "vm2": "10.0.1.5"}

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def ns(lab: str, node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *argv], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def lab() -> Iterator[Callable[[Path], str]]:
    """``lab(file)`` brings a lab up under a unique ``hostlab-*`` name; always torn down, nothing left."""
    names: list[str] = []
    recorded: list[tuple[int, int | None]] = []

    def up(path: Path) -> str:
        name = f"hostlab-{uuid.uuid4().hex[:6]}"
        names.append(name)
        res = cli("up", str(path), "--name", name)
        assert res.returncode == 0, res.stdout + res.stderr
        recorded.extend((p["pid"], p.get("start_time")) for p in LabState.open(name).data["processes"])
        return name

    try:
        yield up
    finally:
        for name in names:
            res = cli("down", name)
            assert res.returncode == 0, res.stderr
        assert [p for p, st in recorded if pid_alive(p, st)] == []


def _esp_next_headers(pcap: Path, rows: list[EspSaRow]) -> tuple[dict[int, int], list[bytes]]:
    """Decrypt every raw ESP packet of ``pcap`` with the exported keys: {next header: count}, plaintexts."""
    be = backend("reference")
    sas = {}
    for r in rows:
        alg = r.algorithm()
        assert alg is not None, r
        sas[int(r.spi, 16)] = be.EspInbound(EspSaConfig(spi=int(r.spi, 16), encr=alg.encr, enc_key=r.enc_key,
                                                        integ=alg.integ, integ_key=r.auth_key if alg.integ else b"",
                                                        replay_window=0))
    nhs: dict[int, int] = {}
    plain: list[bytes] = []
    for p in scapy_all.rdpcap(str(pcap)):
        if IP not in p or p[IP].proto != 50:
            continue
        esp = bytes(p[IP].payload)
        spi = int.from_bytes(esp[:4], "big")
        assert spi in sas, f"ESP SPI {spi:#x} without an exported key"
        res = sas[spi].decap(esp)
        assert res.verdict.name == "OK", res
        nhs[res.next_header] = nhs.get(res.next_header, 0) + 1
        plain.append(bytes(res.payload))
    return nhs, plain


def _clear_tcp(pcap: Path, port: int) -> list[object]:
    return [p for p in scapy_all.rdpcap(str(pcap)) if TCP in p and port in (p[TCP].sport, p[TCP].dport)]


def _sas(name: str, node: str) -> str:
    res = subprocess.run([sys.executable, "-m", "ipsecemu", "sa", "--lab", name, "--node", node, "list"],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "TRANSPORT" in res.stdout, res.stdout
    return res.stdout


def _iperf(name: str, server: str, client: str, seconds: int = 3) -> float:
    """TCP 8080 throughput client -> server (iperf3 -p 8080, the server stopped by PID): Mbit/s."""
    srv = subprocess.Popen(["ip", "netns", "exec", f"{name}-{server}", "iperf3", "-s", "-1", "-p", "8080",
                            "-B", ADDR[server]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(20):
            res = ns(name, client, "iperf3", "-c", ADDR[server], "-p", "8080", "-t", str(seconds), "-f", "m",
                     timeout=seconds + 20)
            if res.returncode == 0:
                break
            subprocess.run(["sleep", "0.2"])
        assert res.returncode == 0, res.stdout + res.stderr
        rate = re.findall(r"([\d.]+) Mbits/sec\s+receiver", res.stdout)
        return float(rate[0])
    finally:
        srv.terminate()
        srv.wait(timeout=5)


@pytest.mark.slow  # ~15 s: lab up, audit, iperf3 3 s, gateway stop/start, lab down
def test_require_audit_transport_framing_and_3des_rate(lab: Callable[[Path], str]) -> None:
    name = lab(LAB)
    res = cli("audit", name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "audit passed: 10 of 10 flows as expected" in res.stdout, res.stdout
    work = LabState.open(name).dir / "audit"
    rows = read_esp_sa(work / "keys" / "esp_sa")
    nhs, plain = _esp_next_headers(work / "ce-msee.pcap", rows)
    assert sum(nhs.values()) >= 8 and set(nhs) == {6}, f"ESP next headers {nhs}: transport framing carries TCP (6)"
    # the transport payload is the TCP segment itself: 8080 on one side, the host addresses around it
    assert all(8080 in (int.from_bytes(x[0:2], "big"), int.from_bytes(x[2:4], "big")) for x in plain)
    clear = _clear_tcp(work / "ce-msee.pcap", 8080)
    # only host2's unanswered SYNs (no policy there, it sends in clear): nothing comes back, no data goes
    assert all(p[IP].src == ADDR["host2"] and p[TCP].flags == "S" for p in clear), [p.summary() for p in clear]
    assert not any(ADDR["host2"] in (p[IP].src, p[IP].dst) for p in _clear_tcp(work / "ce-msee.pcap", 80))
    assert "ESP:3DES_CBC/HMAC_SHA1_96" in _sas(name, "host1")  # the first method of the policy
    # `lab status` lists the policy hosts' SAs like any gateway's: host1 <-> vm1 up after the audit
    st = json.loads(cli("status", name, "--json").stdout)["labs"][0]["vpn"]["tunnels"]
    ends = {(t["node"], t["conn"]): t for t in st}
    assert ends[("host1", "onprem8080-vm1")]["state"] == "ESTABLISHED", st
    assert ends[("vm1", "onprem8080-host1")]["child_sas"][0]["spi_in"] == \
        ends[("host1", "onprem8080-vm1")]["child_sas"][0]["spi_out"], st
    rate = _iperf(name, "vm1", "host1")
    print(f"\n[S5 require, ESP 3DES-SHA1 transport] iperf3 -p 8080 host1 -> vm1 over ER: {rate:.0f} Mbit/s")
    _require_after_the_gateway_is_gone(name, work)


def _require_after_the_gateway_is_gone(name: str, work: Path) -> None:
    """host1's gateway stopped (its tuns and routes go with it): 8080 is refused locally by the prohibit
    route, nothing of it crosses in clear, ping still does; started again, 8080 negotiates on demand."""
    stop = cli("node", name, "host1", "stop")
    assert stop.returncode == 0 and "stopped 1 daemon(s)" in stop.stdout, stop.stdout + stop.stderr
    pcap = work / "gone.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", f"{name}-ce", "tcpdump", "--immediate-mode", "-U", "-i", "msee",
                             "-w", str(pcap), "ip"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        probe = [sys.executable, "-c", "import socket; socket.create_connection(('10.0.1.4', 8080), timeout=3)"]
        res = ns(name, "host1", *probe)
        assert res.returncode != 0 and "Permission denied" in res.stderr, res  # the prohibit route: EACCES
        assert ns(name, "host1", "ping", "-c", "1", "-W", "2", ADDR["vm1"]).returncode == 0
        subprocess.run(["sleep", "0.3"])
    finally:
        dump.terminate()
        dump.wait(timeout=5)
    assert _clear_tcp(pcap, 8080) == []
    start = cli("node", name, "host1", "start", "--wait", "0")
    assert start.returncode == 0, start.stdout + start.stderr
    # nothing listens on vm1:8080 now: its RST is the answer, and it can only arrive through ESP (host1
    # refuses a clear one from port 8080), so "refused" = negotiated again on demand and answered
    for _ in range(50):  # the gateway's tuns come back (it answers its control socket first)
        res = ns(name, "host1", *probe)
        if "Connection refused" in res.stderr:
            break
        subprocess.run(["sleep", "0.2"])
    assert "Connection refused" in res.stderr, res


def _request_variant(tmp_path: Path) -> Path:
    text = LAB.read_text().replace("action: require", "action: request")
    text = text.replace("methods: [3des-sha1, aes128gcm16]", "methods: [aes128gcm16, 3des-sha1]")
    for node in ("host2", "vm1"):  # HTTP on 80 and 8080 (vm2's 8080 is left to iperf3)
        text = re.sub(rf"(\n  {node}:\n    kind: host\n)", r"\1    http: [80, 8080]\n", text)
    text = text[:text.index("\naudit:")] + "\n"  # this variant is checked by HTTP, not by the audit's echo servers
    out = tmp_path / "er-transport-8080-request.yaml"
    out.write_text(text)
    return out


@pytest.mark.slow  # ~10 s: lab up, HTTP + capture, iperf3 3 s, lab down
def test_request_answers_host2_in_clear_and_http_decrypts(lab: Callable[[Path], str], tmp_path: Path) -> None:
    name = lab(_request_variant(tmp_path))
    pcap = tmp_path / "ce-msee.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", f"{name}-ce", "tcpdump", "--immediate-mode", "-U", "-i", "msee",
                             "-s", "0", "-w", str(pcap), "ip"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        get = ns(name, "host1", "curl", "-s", "-m", "10", f"http://{ADDR['vm1']}:8080/index.html")
        assert get.stdout == "vm1\n", get
        get2 = ns(name, "host2", "curl", "-s", "-m", "10", f"http://{ADDR['vm1']}:8080/index.html")
        assert get2.stdout == "vm1\n", get2  # request: no policy at host2, vm1 answers in clear
        subprocess.run(["sleep", "0.5"])
    finally:
        dump.terminate()
        dump.wait(timeout=5)
    keys = tmp_path / "keys"
    assert export_keys(LabState.open(name), keys)  # what `lab capture --keys` writes
    nhs, plain = _esp_next_headers(pcap, read_esp_sa(keys / "esp_sa"))
    assert set(nhs) == {6}, nhs
    assert any(b"GET /index.html HTTP/1.1" in x for x in plain) and any(b"vm1\n" in x for x in plain)
    clear = _clear_tcp(pcap, 8080)
    assert {(p[IP].src, p[IP].dst) for p in clear} == {(ADDR["host2"], ADDR["vm1"]), (ADDR["vm1"], ADDR["host2"])}
    assert any(b"vm1\n" in bytes(p[TCP].payload) for p in clear)  # host2's answer crossed in clear
    assert "ESP:AES_GCM_16-128" in _sas(name, "host1") or "AES_GCM" in _sas(name, "host1")
    rate = _iperf(name, "vm2", "host1")
    print(f"\n[S5 request, ESP AES-GCM-128 transport] iperf3 -p 8080 host1 -> vm2 over ER: {rate:.0f} Mbit/s")
