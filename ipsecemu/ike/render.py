"""SA-state views for ``ipsecemu sa list [--json]``, in the spirit of ``swanctl --list-sas``.

Input is a list of plain dicts, one per IKE SA, using the field names of strongSwan's vici
``list-sas`` answer (``-`` or ``_`` both accepted), so ipsecemu's own SAs and a strongSwan peer's
(``Charon.list_sas_all()``) render the same way.  Times are seconds relative to "now"
(``established``/``install-time`` ago, ``rekey-time``/``life-time`` from now).  Instead of the
separate algorithm fields an SA may carry ``proposal``: a strongSwan proposal string of the
negotiated algorithms (``aes256gcm16-prfsha384-ecp384``).

IKE SA fields: name, uniqueid, version, state, local-host, local-port, local-id, remote-host,
remote-port, remote-id, initiator, initiator-spi, responder-spi, encr-alg, encr-keysize,
integ-alg, prf-alg, dh-group | proposal, established, rekey-time, reauth-time, life-time,
child-sas (name -> child, or a list).
Child SA fields: name, uniqueid, reqid, state, mode, protocol, encap, spi-in, spi-out, encr-alg,
encr-keysize, integ-alg, dh-group, esn | proposal, bytes-in, packets-in, use-in, bytes-out,
packets-out, use-out, install-time, rekey-time, life-time, local-ts, remote-ts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ipsecemu.ike.proposals import ProposalError, parse_proposal
from ipsecemu.ike.transforms import TransformType

_INT_FIELDS = {"uniqueid", "version", "local_port", "remote_port", "established", "rekey_time", "reauth_time",
               "life_time", "reqid", "bytes_in", "packets_in", "use_in", "bytes_out", "packets_out", "use_out",
               "install_time", "encr_keysize", "integ_keysize"}
_BOOL_FIELDS = {"initiator", "encap", "esn", "nat_local", "nat_remote", "nat_fake", "nat_any"}


def _key(k: object) -> str:
    return str(k).replace("-", "_").lower()


def _bool(v: object) -> bool:
    if isinstance(v, str):
        return v.lower() in ("yes", "true", "1")
    return bool(v)


def _spi(v: object, width: int) -> str:
    """SPIs as fixed-width lowercase hex, whatever form they came in (int, bytes, hex)."""
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex().rjust(width, "0")
    if isinstance(v, int):
        return f"{v:0{width}x}"
    s = str(v).lower().removeprefix("0x")
    return s.rjust(width, "0")


def _expand_proposal(out: dict[str, Any], protocol: str) -> None:
    text = out.get("proposal")
    if not text:
        return
    try:
        p = parse_proposal(str(text), protocol)
    except ProposalError:
        out.setdefault("encr_alg", str(text))  # show what we were given rather than fail
        return
    e = p.encr
    if e is not None:
        out["encr_alg"] = e.swan_name
        if e.key_bits:
            out["encr_keysize"] = e.key_bits
    if p.integ is not None:
        out["integ_alg"] = p.integ.swan_name
    if p.prf is not None:
        out["prf_alg"] = p.prf.swan_name
    if p.ke is not None:
        out["dh_group"] = p.ke.swan_name
    if protocol == "esp" and p.of_type(TransformType.ESN):
        out["esn"] = p.esn


def _ts(v: object) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return v.split()
    return [str(x) for x in v]  # type: ignore[attr-defined]  # any iterable of names


def _normal(d: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        k = _key(k)
        if k in ("child_sas", "ike"):
            continue
        if k in _INT_FIELDS and v is not None and v != "":
            try:
                v = int(v)
            except (TypeError, ValueError):
                pass
        elif k in _BOOL_FIELDS:
            v = _bool(v)
        out[k] = v
    _expand_proposal(out, protocol)
    return out


def normalize(sas: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Canonical JSON-able form: ``_`` keys, ints, bools, hex SPIs, children as a list.

    Accepts a list of IKE SA dicts, a vici-style ``{name: sa}`` mapping, or a list of
    ``(name, sa)`` pairs (``Charon.list_sas_all()``).
    """
    items: list[tuple[str | None, Mapping[str, Any]]] = []
    if isinstance(sas, Mapping):
        items = [(str(n), v) for n, v in sas.items()]
    else:
        for x in sas:
            if isinstance(x, tuple | list) and len(x) == 2 and isinstance(x[1], Mapping):
                items.append((str(x[0]), x[1]))
            else:
                items.append((None, x))
    out = []
    for name, sa in items:
        ike = _normal(sa, "ike")
        if name is not None:
            ike.setdefault("name", name)
        for f in ("initiator_spi", "responder_spi"):
            if f in ike:
                ike[f] = _spi(ike[f], 16)
        raw_children = next((v for k, v in sa.items() if _key(k) == "child_sas"), None) or []
        if isinstance(raw_children, Mapping):
            child_items = [(str(n), c) for n, c in raw_children.items()]
        else:
            child_items = [(None, c) for c in raw_children]  # type: ignore[misc]  # unnamed children
        children = []
        for cname, c in child_items:
            ch = _normal(c, "esp")
            if cname is not None:
                # vici keys children "name-uniqueid"; the child's own name field wins
                ch.setdefault("name", cname.rsplit("-", 1)[0] if "-" in cname else cname)
            for f in ("spi_in", "spi_out"):
                if f in ch:
                    ch[f] = _spi(ch[f], 8)
            for f in ("local_ts", "remote_ts"):
                ch[f] = _ts(ch.get(f))
            children.append(ch)
        ike["child_sas"] = children
        out.append(ike)
    return out


def render_json(sas: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """``sa list --json``: the normalized list, stable key order."""
    return json.dumps(normalize(sas), indent=2, sort_keys=True, default=str)


def _g(d: Mapping[str, Any], k: str, default: object = "") -> Any:
    v = d.get(k)
    return default if v is None else v


def _algs(d: Mapping[str, Any], *, ike: bool) -> str:
    if not d.get("encr_alg"):
        return ""
    s = str(d["encr_alg"])
    if d.get("encr_keysize"):
        s += f"-{d['encr_keysize']}"
    if d.get("integ_alg"):
        s += f"/{d['integ_alg']}"
        if d.get("integ_keysize"):
            s += f"-{d['integ_keysize']}"
    if d.get("prf_alg"):
        s += f"/{d['prf_alg']}"
    if d.get("dh_group"):
        s += f"/{d['dh_group']}"
    if not ike and d.get("esn"):
        s += "/ESN"
    return s


def _trap_line(t: Mapping[str, Any]) -> str:
    """An ipsecemu ``start_action: trap`` connection (gateway/trap.py): routes, fallback, triggers, queue."""
    s = (f"  trap: routes {t.get('routes', '?')}, fallback {t.get('fallback', '?')} after {t.get('timeout', '?')}s, "
         f"{t.get('triggers', 0)} trigger(s), {t.get('failures', 0)} failure(s)")
    if t.get("negotiating"):
        s += ", negotiating"
    q = t.get("queue")
    if isinstance(q, Mapping):
        s += (f"; queue {q.get('queued_now', 0)} packet(s) now, {q.get('queued', 0)} queued, "
              f"{q.get('flushed', 0)} sent, {q.get('dropped', 0)} dropped, {q.get('discarded', 0)} discarded")
    return s + (f" (last failure: {t['last_failure']})" if t.get("last_failure") else "")


def render_text(sas: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """The swanctl-style text view (same line layout as ``swanctl --list-sas``)."""
    lines: list[str] = []
    for ike in normalize(sas):
        init = bool(ike.get("initiator"))
        lines.append(
            f"{_g(ike, 'name', '?')}: #{_g(ike, 'uniqueid')}, {_g(ike, 'state')}, IKEv{_g(ike, 'version', 2)}, "
            f"{_g(ike, 'initiator_spi')}_i{'*' if init else ''} {_g(ike, 'responder_spi')}_r{'' if init else '*'}"
        )
        lines.append(f"  local  '{_g(ike, 'local_id')}' @ {_g(ike, 'local_host')}[{_g(ike, 'local_port')}]")
        lines.append(f"  remote '{_g(ike, 'remote_id')}' @ {_g(ike, 'remote_host')}[{_g(ike, 'remote_port')}]")
        algs = _algs(ike, ike=True)
        if algs:
            lines.append(f"  {algs}")
        if ike.get("attempts"):
            # an ipsecemu gateway backing off a failing connection (gateway/timers.py Backoff)
            s = f"  failed {ike['attempts']} time(s) in a row"
            if ike.get("next_attempt") is not None:
                s += f", next attempt in {ike['next_attempt']}s"
            lines.append(s + (f" (last: {ike['last_failure']})" if ike.get("last_failure") else ""))
        if isinstance(ike.get("trap"), Mapping):
            lines.append(_trap_line(ike["trap"]))
        if ike.get("established") is not None:
            s = f"  established {ike['established']}s ago"
            for key, word in (("rekey_time", "rekeying in"), ("reauth_time", "reauth in"),
                              ("life_time", "expires in")):
                if ike.get(key) is not None:
                    s += f", {word} {ike[key]}s"
            lines.append(s)
        for ch in ike["child_sas"]:
            mode = str(_g(ch, "mode", "TUNNEL")).upper()
            lines.append(
                f"  {_g(ch, 'name', '?')}: #{_g(ch, 'uniqueid')}, reqid {_g(ch, 'reqid')}, {_g(ch, 'state')}, "
                f"{mode}{'-in-UDP' if ch.get('encap') else ''}, {str(_g(ch, 'protocol', 'ESP')).upper()}:"
                f"{_algs(ch, ike=False)}"
            )
            s = f"    installed {_g(ch, 'install_time', 0)}s ago"
            if ch.get("rekey_time") is not None:
                s += f", rekeying in {ch['rekey_time']}s"
            if ch.get("life_time") is not None:
                s += f", expires in {ch['life_time']}s"
            lines.append(s)
            for d in ("in", "out"):
                s = (f"    {d:<3} {_g(ch, 'spi_' + d)}, {_g(ch, 'bytes_' + d, 0):>6} bytes, "
                     f"{_g(ch, 'packets_' + d, 0):>5} packets")
                if ch.get(f"use_{d}") is not None:
                    s += f", {ch[f'use_{d}']:>5}s ago"
                lines.append(s)
            lines.append(f"    local  {' '.join(ch['local_ts'])}")
            lines.append(f"    remote {' '.join(ch['remote_ts'])}")
    return "\n".join(lines) + ("\n" if lines else "")
