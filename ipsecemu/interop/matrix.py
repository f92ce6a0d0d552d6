"""The ipsecemu <-> strongSwan interop matrix behind ``ipsecemu interop`` / ``make interop``.

Rows are test cases, columns who initiates (the IKE SA, or the exchange the case is about):
``ipsecemu`` (we send the request, charon answers) or ``charon`` (the other way round).  Each cell
runs on a fresh :func:`~ipsecemu.interop.pair.ours_vs_charon` pair (ipsecemu IKE core + asyncio
transport + tun forwarder on the left, charon + kernel-libipsec on the right), is checked through
vici (ESTABLISHED/INSTALLED, same IKE/ESP SPIs, algorithms, keys) and by data (pings between the
inside hosts through our ESP and charon's libipsec), and ends as a pass or a short reason; a
cell never raises and never runs longer than its time limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ipsecemu.base.errors import CheckFailed
from ipsecemu.ike import events as ev

from .pair import InteropMismatch, ours_vs_charon

__all__ = ["CASES", "COLUMNS", "Cell", "Case", "format_matrix", "run_cell", "run_matrix"]

FAST_IKE = "aes128gcm16-prfsha256-ecp256"
PREFIX = "ix"  # netns of a cell: ix<6 hex>L/R/HL/HR
#: column id -> heading
COLUMNS = {"ipsecemu": "ipsecemu→charon", "charon": "charon→ipsecemu"}
#: charon's list-sas dh-group name of each proposal's key exchange
DH = {"modp1024": "MODP_1024", "modp2048": "MODP_2048", "ecp256": "ECP_256", "ecp384": "ECP_384",
      "x25519": "CURVE_25519"}
#: our proposal's PRF token -> charon's prf-alg
PRF = {"prfsha1": "PRF_HMAC_SHA1", "prfsha256": "PRF_HMAC_SHA2_256", "prfsha384": "PRF_HMAC_SHA2_384",
       "prfsha512": "PRF_HMAC_SHA2_512"}


class CaseFailed(CheckFailed):
    """A cell's check failed (the message is the short reason shown in the matrix)."""


@dataclass
class Cell:
    case: str
    initiator: str  # "ipsecemu" | "charon"
    ok: bool = False
    reason: str = ""
    seconds: float = 0.0
    pings: tuple[int, int] = (0, 0)


Check = Callable[[Any, "Case", bool, int], Awaitable[tuple[int, int]]]


@dataclass(frozen=True)
class Case:
    name: str
    ike: str
    esp: str
    check: Check
    charon_kw: tuple[tuple[str, Any], ...] = ()
    ours_kw: tuple[tuple[str, Any], ...] = ()


# --------------------------------------------------------------------------- checks
def _need(ok: object, reason: str) -> None:
    if not ok:
        raise CaseFailed(reason)


async def _pings(s: Any, n: int, expect: bool = True) -> tuple[int, int]:
    got = await s.pings(n)
    want = (n, n) if expect else (0, 0)
    _need(got == want, f"pings {got[0]}/{n} ipsecemu side->charon side, {got[1]}/{n} back" +
          ("" if expect else " (expected none)"))
    return cast(tuple[int, int], got)


async def _up(s: Any, we: bool, *, keys: bool = True) -> tuple[Any, Any]:
    try:
        ike_ev, child_ev = await s.establish(we)
        s.check_same_sa(ike_ev, child_ev)
        if keys:
            s.check_same_keys(child_ev)
    except InteropMismatch as exc:
        raise CaseFailed(str(exc).splitlines()[0]) from None
    return ike_ev, child_ev


async def check_proposal(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    """IKE_SA_INIT + IKE_AUTH with the case's proposals: same SA, same keys, the IKE algorithms
    both sides report are the case's (DH group, PRF, key size), data passes."""
    ike_ev, _child = await _up(s, we)
    sa = s.charon_sa()
    group = next((DH[p] for p in case.ike.split("-") if p in DH), None)
    _need(group is None or sa.get("dh-group") == group, f"charon negotiated {sa.get('dh-group')}, expected {group}")
    ours = ike_ev.proposal.split("-")
    prf = next((PRF[p] for p in ours if p in PRF), None)
    _need(prf is not None and sa.get("prf-alg") == prf, f"charon's PRF {sa.get('prf-alg')}, ours {prf}")
    size = next((p[3:6] for p in ours if p.startswith("aes")), "")
    _need(sa.get("encr-keysize") == size, f"IKE key size: charon {sa.get('encr-keysize')}, ours {size}")
    _need(group is None or group.split("_")[-1].lower() in ike_ev.proposal.replace("x25519", "25519"),
          f"we negotiated {ike_ev.proposal}")
    pings = await _pings(s, n)
    child = s.charon_child()
    _need(int(child.get("packets-in", 0)) >= 2 * n and int(child.get("packets-out", 0)) >= 2 * n,
          f"charon's libipsec counted {child.get('packets-in')} in / {child.get('packets-out')} out")
    return pings


async def check_child_pfs(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    """A CHILD_SA with PFS: the rekey (CREATE_CHILD_SA, by the column's side) carries a KE payload."""
    _ike, child_ev = await _up(s, we)
    await _pings(s, 1)
    if we:
        s.peer.call(s.peer.sa().rekey_child, child_ev.keys.inbound.spi)
    else:
        await s.charon_call(s.charon.rekey, child="net")
    rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
    _need(await s.until(lambda: int(s.charon_child().get("spi-in", "0"), 16) == rekeyed.keys.outbound.spi),
          "charon did not install the rekeyed CHILD_SA")
    _need(s.charon_child().get("dh-group") == "ECP_256",
          f"charon's rekeyed CHILD_SA has dh-group {s.charon_child().get('dh-group')!r}, expected ECP_256")
    return await _pings(s, n)


async def check_child_rekey(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    _ike, child_ev = await _up(s, True, keys=False)
    old_in = child_ev.keys.inbound.spi
    await _pings(s, 1)
    if we:
        s.peer.call(s.peer.sa().rekey_child, old_in)
    else:
        await s.charon_call(s.charon.rekey, child="net")
    rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
    _need(rekeyed.old_inbound_spi == old_in and rekeyed.keys.inbound.spi != old_in, "rekey kept the old SPI")
    await s.peer.transport.wait_event(ev.ChildSaDeleted, 8)
    _need(await s.until(lambda: int(s.charon_child().get("spi-in", "0"), 16) == rekeyed.keys.outbound.spi
                        and len(s.charon_sa().get("child-sas", {})) == 1),
          "charon still shows the old CHILD_SA or not the new one")
    pings = await _pings(s, n)
    _need(int(s.charon_child().get("packets-in", 0)) == 2 * n, "traffic did not move to the new CHILD_SA")
    return pings


async def check_ike_rekey(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    ike_ev, _child = await _up(s, True, keys=False)
    if we:
        s.peer.call(s.peer.sa().rekey_ike)
    else:
        await s.charon_call(s.charon.rekey, ike="pair")
    r = await s.peer.transport.wait_event(ev.IkeSaRekeyed, 8)
    _need((r.new_spi_i, r.new_spi_r) != (ike_ev.ike_spi_i, ike_ev.ike_spi_r), "new IKE SA has the old SPIs")
    _need(await s.until(lambda: s.charon_sa().get("initiator-spi") == r.new_spi_i.hex()
                        and s.charon_sa().get("responder-spi") == r.new_spi_r.hex()
                        and len(s.charon.list_sas_all()) == 1),
          "charon does not show exactly the new IKE SA")
    pings = await _pings(s, n)  # the CHILD_SA moved over and still carries traffic
    await s.charon_call(s.charon.rekey, child="net")  # and the new IKE SA works
    await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
    return pings


async def check_delete(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    """Delete the CHILD_SA, then the IKE SA (by the column's side); traffic stops, both forget."""
    _ike, child_ev = await _up(s, True, keys=False)
    pings = await _pings(s, n)
    if we:
        s.peer.call(s.peer.sa().delete_child, child_ev.keys.inbound.spi)
    else:
        await s.charon_call(s.charon.terminate, child="net")
    gone = await s.peer.transport.wait_event(ev.ChildSaDeleted, 8)
    _need(gone.inbound_spi == child_ev.keys.inbound.spi, "a different CHILD_SA was deleted")
    _need(await s.until(lambda: s.charon_sa().get("state") == "ESTABLISHED" and not s.charon_child()),
          "charon still shows the CHILD_SA")
    await _pings(s, 1, expect=False)
    if we:
        s.peer.call(s.peer.sa().delete)
    else:
        await s.charon_call(s.charon.terminate, ike="pair")
    dead = await s.peer.transport.wait_event(ev.IkeSaDeleted, 8)
    _need(dead.reason == ("local" if we else "remote"), f"IKE SA ended with reason {dead.reason!r}")
    _need(await s.until(lambda: not s.charon.list_sas()), "charon still shows the IKE SA")
    return pings


async def check_dpd(s: Any, case: Case, we: bool, n: int) -> tuple[int, int]:
    """ipsecemu column: our DPD probe is answered.  charon column: charon's probes (dpd_delay 1 s)
    are each answered at once (no retransmission); the SA stays up either way."""
    await _up(s, True, keys=False)
    if we:
        before = s.peer.transport.counters["ike_in"]
        s.peer.call(s.peer.sa().dpd)
        _need(await s.until(lambda: s.peer.transport.counters["ike_in"] > before, 3), "charon did not answer our DPD")
    else:
        def log() -> str:
            return str(s.charon.log_file.read_text(errors="replace"))

        _need(await s.until(lambda: log().count("sending DPD request") >= 1, 5), "charon sent no DPD probe")
        _need(await s.until(lambda: log().count("parsed INFORMATIONAL response") >= 1, 3),
              "our DPD answer did not reach charon")
        _need("retransmit" not in log(), "charon had to retransmit its DPD probe")
    _need(s.charon_sa().get("state") == "ESTABLISHED", "charon's IKE SA is gone")
    _need(not any(isinstance(e, ev.IkeSaDeleted) for e in s.peer.history), "our IKE SA was deleted")
    return await _pings(s, n)


CASES: tuple[Case, ...] = (
    Case("aes256-sha256-modp1024", "aes256-sha256-modp1024", "aes256-sha256", check_proposal),
    Case("aes256-sha256-modp2048", "aes256-sha256-modp2048", "aes256-sha256", check_proposal),
    Case("aes128-sha1-modp2048", "aes128-sha1-modp2048", "aes128-sha1", check_proposal),
    Case("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha384-ecp384", "aes256gcm16", check_proposal),
    Case("aes128gcm16-prfsha256-ecp256", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", check_proposal),
    Case("aes256-sha384-x25519", "aes256-sha384-x25519", "aes256-sha384", check_proposal),
    Case("child-pfs (esp aes256gcm16-ecp256)", FAST_IKE, "aes256gcm16-ecp256", check_child_pfs),
    Case("child-rekey", FAST_IKE, "aes128gcm16", check_child_rekey),
    Case("ike-rekey", FAST_IKE, "aes128gcm16", check_ike_rekey),
    Case("delete (child, then IKE)", FAST_IKE, "aes128gcm16", check_delete),
    Case("dpd", FAST_IKE, "aes128gcm16", check_dpd, charon_kw=(("dpd_delay", 1),)),
)


# --------------------------------------------------------------------------- running
async def run_cell(case: Case, initiator: str, *, pings: int = 2, limit: float = 40.0,
                   prefix: str | None = None) -> Cell:
    """One cell on a fresh topology; never raises, never runs past ``limit`` seconds."""
    cell = Cell(case.name, initiator)
    t0 = time.perf_counter()
    try:
        async def body() -> None:
            async with ours_vs_charon(prefix or PREFIX + uuid.uuid4().hex[:6], case.ike, case.esp, key_log=True,
                                      charon_kw=dict(case.charon_kw), ours_kw=dict(case.ours_kw)) as s:
                cell.pings = await case.check(s, case, initiator == "ipsecemu", pings)

        await asyncio.wait_for(body(), limit)
        cell.ok = True
    except CaseFailed as exc:
        cell.reason = str(exc)
    except TimeoutError:
        cell.reason = f"timed out ({limit:g} s)" if time.perf_counter() - t0 >= limit else "timed out waiting"
    except Exception as exc:  # noqa: BLE001 - a broken cell is a reported ✗, the matrix goes on
        cell.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    cell.seconds = round(time.perf_counter() - t0, 2)
    return cell


def run_matrix(cases: Sequence[Case] = CASES, initiators: Sequence[str] = tuple(COLUMNS), *, pings: int = 2,
               limit: float = 40.0, progress: Callable[[Cell], None] | None = None) -> list[Cell]:
    out = []
    for case in cases:
        for who in initiators:
            cell = asyncio.run(run_cell(case, who, pings=pings, limit=limit))
            if progress:
                progress(cell)
            out.append(cell)
    return out


def format_matrix(cells: Sequence[Cell], width: int = 34) -> str:
    """Rows: cases; columns: initiators; ✓ / ✗ with a short reason (as the QUIC interop runner)."""
    cols = list(dict.fromkeys(c.initiator for c in cells))
    rows = list(dict.fromkeys(c.case for c in cells))
    by = {(c.case, c.initiator): c for c in cells}
    first = max([len(r) for r in rows] + [4])
    lines = [(f"{'case':<{first}}  " + "  ".join(f"{COLUMNS.get(c, c):<{width}}" for c in cols)).rstrip()]
    lines.append("-" * (first + 2 + (width + 2) * len(cols) - 2))
    for r in rows:
        parts = []
        for c in cols:
            cell = by.get((r, c))
            if cell is None:
                txt = ""
            elif cell.ok:
                txt = f"✓ {cell.seconds:.1f}s"
            else:
                txt = "✗ " + cell.reason
                txt = txt if len(txt) <= width else txt[:width - 1] + "…"
            parts.append(f"{txt:<{width}}")
        lines.append(f"{r:<{first}}  " + "  ".join(parts).rstrip())
    passed = sum(c.ok for c in cells)
    lines.append(f"{passed}/{len(cells)} cells passed")
    return "\n".join(lines)
