"""tcpdump inside a lab netns: started by PID, recorded in the lab state, stopped by PID."""

from __future__ import annotations

import ipaddress
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

from ipsecemu.base.errors import LabError
from ipsecemu.gateway.control import ControlError, request
from ipsecemu.net import NetError
from ipsecemu.net.netns import ipr_in, ns_argv
from ipsecemu.strongswan.charon import Charon
from ipsecemu.strongswan.keylog import ike_algorithms, wireshark_esp_sa, wireshark_ikev2

from .state import LabState

_COUNT_RE = re.compile(r"^(\d+) packets? captured", re.M)


class CaptureError(LabError):
    """Capture could not start (bad interface, tcpdump missing); one-line message."""


class Capture:
    def __init__(self, state: LabState, node: str, iface: str, path: str | Path, bpf: str | None = None) -> None:
        """``iface`` "any": every interface of the node (tcpdump's cooked capture); ``bpf``: a tcpdump
        filter expression (e.g. "udp port 4500 or esp": the ESP whichever ECMP link it takes)."""
        ns = state.node_netns(node)
        if ns is None:
            raise CaptureError(f"lab '{state.name}' has no node '{node}'")
        self.state, self.node, self.iface, self.ns, self.bpf = state, node, iface, ns, bpf
        self.path = Path(path).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.packets: int | None = None
        self._stderr = b""

    def _check_iface(self) -> None:
        try:
            with ipr_in(self.ns) as ipr:
                names = sorted(link.get("ifname") for link in ipr.link("dump"))
        except NetError as exc:
            raise CaptureError(str(exc)) from None
        if self.iface not in names and self.iface != "any":
            raise CaptureError(f"node '{self.node}' has no interface '{self.iface}' (has: {', '.join(names)})")

    def start(self, timeout: float = 5.0) -> None:
        """Start tcpdump and return once it is listening (so no early packet is missed)."""
        if shutil.which("tcpdump") is None:
            raise CaptureError("tcpdump is not installed (apt-get install tcpdump)")
        self._check_iface()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # `ip netns exec` execs tcpdump in place, so the PID is tcpdump's; -Z root keeps it able to
        # write anywhere root can; -U and --immediate-mode hand over and flush each packet at once, so
        # nothing still sits in the ring buffer when we stop it.
        cmd = ns_argv(self.ns, "tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root",
                      "-w", str(self.path), *([self.bpf] if self.bpf else []))
        # own session: a terminal Ctrl-C reaches us, and we stop tcpdump cleanly by PID
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.state.add_process(self.proc.pid, "capture", self.node, cmd)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while b"listening on" not in self._stderr:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None or left <= 0:
                self.stop()
                msg = self._stderr.decode(errors="replace").strip().splitlines()
                raise CaptureError(f"tcpdump did not start: {msg[-1] if msg else 'timeout'}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                self._stderr += chunk

    def stop(self) -> int:
        """Stop tcpdump (SIGINT by PID), wait, return the number of packets captured."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        self._stderr += self.proc.stderr.read()
        self.proc.stderr.close()
        self.state.remove_process(self.proc.pid)
        m = _COUNT_RE.search(self._stderr.decode(errors="replace"))
        self.packets = int(m.group(1)) if m else 0
        return self.packets

    def wait(self, duration: float | None) -> None:
        """Let tcpdump run for ``duration`` seconds (None: until Ctrl-C or tcpdump exits)."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while self.proc is not None and self.proc.poll() is None:
                if end is not None and time.monotonic() >= end:
                    return
                time.sleep(0.2 if end is None else min(0.2, max(0.0, end - time.monotonic())))
        except KeyboardInterrupt:
            pass

    def run(self, duration: float | None) -> int:
        self.start()
        self.wait(duration)
        return self.stop()


def _charon_key_lines(state: LabState, node: str) -> tuple[list[str], list[str]]:
    """esp_sa and ikev2_decryption_table lines for a charon node, from its level-4 key log."""
    ns = state.node_netns(node) or ""
    ch = Charon(ns, state.charon_dir(node))
    if not ch.vici_path.exists():
        return [], []
    try:
        kl = ch.keys()
        children = ch.child_sas()
    except Exception:  # noqa: BLE001 - charon not running: nothing to export
        return [], []
    esp: list[str] = []
    ike: list[str] = []
    by_spi = {r["spi"]: r for r in kl.esp}
    for c in children:
        rows = [by_spi[s] for s in (c.get("spi-in"), c.get("spi-out")) if s in by_spi]
        esp += wireshark_esp_sa(rows, c.get("encr-alg", "AES_GCM_16"), c.get("integ-alg", "")).splitlines()
    sas = {sa.get("uniqueid"): sa for _n, sa in ch.list_sas_all()}
    for row in kl.ike:
        sa = sas.get(row["uid"])
        algs = ike_algorithms(sa) if sa is not None else None
        if algs is not None:
            ike += wireshark_ikev2([row], *algs).splitlines()
    return esp, ike


def export_keys(state: LabState, dest: str | Path) -> list[Path]:
    """Write Wireshark ``esp_sa`` and ``ikev2_decryption_table`` for the lab's current SAs into ``dest``.

    Each running ipsecemu gateway is asked over its control socket (``export_keys``), each charon's
    key log is read; rows are merged without duplicates (both ends of a tunnel know its SAs).
    Falls back to copying key files found in the lab's keys dir.  Files are 0600: they hold keys.
    """
    out = Path(dest).resolve()
    esp: list[str] = []
    ike: list[str] = []
    for node, kind in (state.data.get("nodes") or {}).items():
        if kind in ("ipsecemu", "host"):  # a host with an IPsec policy runs a gateway too (S5)
            sock = state.dir / node / "control.sock"
            if not sock.exists():
                continue
            tmp = out / f".{node}"
            try:
                tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
                request(sock, "export_keys", timeout=5.0, dir=str(tmp))
                esp += (tmp / "esp_sa").read_text().splitlines()
                ike += (tmp / "ikev2_decryption_table").read_text().splitlines()
            except (ControlError, OSError):
                pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        elif kind == "strongswan":
            e, i = _charon_key_lines(state, node)
            esp += e
            ike += i
    esp = [x for x in dict.fromkeys(esp) if x.strip() and not x.startswith("#")]
    ike = [x for x in dict.fromkeys(ike) if x.strip() and not x.startswith("#")]
    if not esp and not ike:
        return _copy_key_files(state, out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, lines in (("esp_sa", esp), ("ikev2_decryption_table", ike)):
        target = out / name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys: owner only
        with os.fdopen(fd, "w") as f:
            f.write("".join(x + "\n" for x in lines))
        os.chmod(target, 0o600)
        written.append(target)
    # MACsec SAK files (and anything else the lab's services export) come along too
    return written + _copy_key_files(state, out, skip={"esp_sa", "ikev2_decryption_table"})


def tshark_hint(keys_dir: str | Path, pcap: str | Path) -> str:
    """The tshark command line that decrypts ``pcap`` with the key files in ``keys_dir``."""
    k = Path(keys_dir)
    return (f"XDG_CONFIG_HOME=$(mktemp -d) sh -c 'mkdir -p $XDG_CONFIG_HOME/wireshark && "
            f"cp {k}/esp_sa {k}/ikev2_decryption_table $XDG_CONFIG_HOME/wireshark/ && "
            f"tshark -r {pcap} -o esp.enable_encryption_decode:TRUE'")


def _copy_key_files(state: LabState, dest: Path, skip: set[str] | None = None) -> list[Path]:
    src = state.keys_dir
    files = sorted(p for p in src.iterdir() if p.is_file() and p.name not in (skip or set())) \
        if src.is_dir() else []
    if not files:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        target = dest / f.name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys: owner only, from the start
        with os.fdopen(fd, "wb") as out:
            out.write(f.read_bytes())
        os.chmod(target, 0o600)
        copied.append(target)
    return copied


# ---------------------------------------------------------------- what is on the wire

Flow = tuple[str, str, str]  # (src, dst, kind): kind esp-in-udp | ike | esp | icmp | tcp | udp | ip<N>


def pcap_flows(path: str | Path) -> dict[Flow, int]:
    """Count IPv4 packets of a pcap (Ethernet or raw IP) by (src, dst, kind), without dissectors."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return {}
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<",
              b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise ValueError(f"{path}: not a pcap file (pcapng is not read here)")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out: Counter[Flow] = Counter()
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype == 1:  # Ethernet, maybe one VLAN tag
            if len(pkt) < 14:
                continue
            etype, ip = struct.unpack("!H", pkt[12:14])[0], pkt[14:]
            if etype == 0x8100 and len(pkt) >= 18:
                etype, ip = struct.unpack("!H", pkt[16:18])[0], pkt[18:]
            if etype != 0x0800:
                continue
        elif linktype in (101, 228):  # raw IPv4
            ip = pkt
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        l4 = ip[ihl:]
        kind = {1: "icmp", 6: "tcp", 17: "udp", 50: "esp"}.get(proto, f"ip{proto}")
        if proto == 17 and len(l4) >= 8:
            sport, dport = struct.unpack("!HH", l4[:4])
            if 4500 in (sport, dport):
                body = l4[8:]
                if len(body) == 1 and body == b"\xff":
                    kind = "natt-keepalive"
                else:
                    kind = "ike" if body[:4] == b"\0\0\0\0" else "esp-in-udp"
            elif 500 in (sport, dport):
                kind = "ike"
        out[(src, dst, kind)] += 1
    return dict(out)
