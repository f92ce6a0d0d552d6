"""``ipsecemu lab``: bring netns labs up and down, inspect them, run commands and captures in them."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from ipsecemu.base.errors import (
    EXIT_INTERRUPTED,
    CheckFailed,
    ConfigError,
    IpsecemuError,
    LabError,
    NeedsRootError,
    SystemSetupError,
)
from ipsecemu.commands.base import ExitWithMessage, Group
from ipsecemu.lab.state import LabState, LabStateError, list_labs, pid_alive
from ipsecemu.lab.topology import VPN_KINDS, TopologyError


def _fail(msg: str, family: type[IpsecemuError] = LabError) -> NoReturn:
    """End the command with one line and the family's exit status (commands.base maps it)."""
    raise family(msg)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        _fail(f"{what} needs root (network namespaces); run it with sudo", NeedsRootError)


def _resolve(spec: str) -> tuple[LabState, str]:
    """``lab/node`` or just ``node`` when exactly one lab is up."""
    if "/" in spec:
        lab, node = spec.split("/", 1)
    else:
        labs = list_labs()
        if not labs:
            _fail("no lab is up (ipsecemu lab up FILE)")
        if len(labs) > 1:
            _fail(f"several labs are up ({', '.join(labs)}): name the node as LAB/{spec}")
        lab, node = labs[0], spec
    try:
        st = LabState.open(lab)
    except LabStateError as exc:
        _fail(str(exc))
    nodes = st.data.get("nodes", {})
    if node not in nodes:
        _fail(f"lab '{lab}' has no node '{node}' (nodes: {', '.join(nodes) or 'none'})")
    return st, node


@click.group(cls=Group)
def lab() -> None:
    """Bring network-namespace labs up and down, inspect and capture them."""


# ---------------------------------------------------------------- up


_MAIN_PID = os.getpid()


def _raise_interrupt(signum: int, frame: Any) -> None:
    # pyroute2 forks helpers for netns sockets and stops them with SIGTERM: a child must just
    # die, never run the parent's rollback
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    # Python swallows an exception raised while an at-fork hook runs (pyroute2 forks during
    # netns creation): the flag makes the builder stop at its next step even then.
    from ipsecemu.lab import builder  # lazy: CLI start-up

    builder.INTERRUPTED.set()
    raise KeyboardInterrupt


def _quiet_swallowed_interrupt(u: Any) -> None:
    """A Ctrl-C that lands in an at-fork hook is swallowed there (and the builder's flag takes
    over): don't print Python's 'Exception ignored' traceback for it."""
    if isinstance(u.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(u)


@lab.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", help="Run the lab under another name (a second copy of the same file).")
@click.option("--smoke", is_flag=True, help="After building, ping between every pair of host nodes.")
@click.option("--dry-run", is_flag=True, help="Print the plan (netns, links, addresses, routes, daemons and their "
              "configs) and build nothing; no root needed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With --dry-run: write the generated configs (gateway.yaml, swanctl.conf, ...) under this dir.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
def up(file: str, name: str | None, smoke: bool, dry_run: bool, out_dir: str | None, as_json: bool) -> None:
    """Build the lab described by FILE (YAML) in network namespaces."""
    from ipsecemu.lab import builder, check, plan  # lazy: CLI start-up
    from ipsecemu.lab.errors import BuildError  # lazy: CLI start-up

    if (out_dir or as_json) and not dry_run:
        raise click.UsageError("--out and --json go with --dry-run")
    try:  # validate before anything else: a broken file never touches the system
        topo = check.check_file(file, name=name)
        lab_plan = plan.compile_plan(topo)  # everything lab up will do, derived once
    except TopologyError as exc:
        _fail(str(exc), ConfigError)
    if dry_run:
        _dry_run(lab_plan, out_dir, as_json)
        return
    _need_root("lab up")
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM rolls back like Ctrl-C
    signal.signal(signal.SIGINT, _raise_interrupt)
    sys.unraisablehook = _quiet_swallowed_interrupt

    def say(msg: str) -> None:
        click.echo(f"  {msg}")

    click.echo(f"lab {topo.name}: building from {file}")
    t0 = time.monotonic()
    try:
        builder.apply(lab_plan, say)
    except KeyboardInterrupt:
        raise ExitWithMessage(f"lab {topo.name}: interrupted, rolled back (nothing left behind)",
                              EXIT_INTERRUPTED) from None
    except LabStateError as exc:
        _fail(str(exc))
    except BuildError as exc:
        _fail(f"lab {topo.name}: {exc} (rolled back)")
    except OSError as exc:
        _fail(f"lab {topo.name}: {exc.strerror or exc} (rolled back)", SystemSetupError)
    except Exception as exc:  # an unexpected failure still gets one line; the lab is rolled back
        _fail(f"lab {topo.name}: unexpected {type(exc).__name__}: {exc} (rolled back)")
    dt = time.monotonic() - t0
    nroutes = sum(len(n.routes) for n in topo.nodes)
    necmp = sum(r.multipath for n in topo.nodes for r in n.routes)
    click.echo(f"lab {topo.name} up in {dt:.1f} s: {len(topo.nodes)} nodes, {len(topo.links)} links, "
               f"{len(topo.segments)} segment(s), {sum(len(n.addresses) for n in topo.nodes)} addresses, "
               f"{nroutes} routes ({necmp} ECMP)")
    vpn_nodes = sorted({n for c in topo.vpn for n in c.nodes})
    if topo.vpn:
        click.echo(f"  vpn: {len(topo.vpn)} tunnel(s) up ({', '.join(c.name for c in topo.vpn)}); "
                   f"gateways on {', '.join(vpn_nodes)}")
    hosts = [n for n in topo.nodes if n.kind == "host" and n.addresses]
    if len(hosts) >= 2 and not (smoke and topo.vpn):  # the VPN smoke prints its own next steps
        dst = ipaddress.ip_interface(hosts[0].addresses[0][1]).ip
        click.echo(f"  try: ipsecemu lab exec {topo.name}/{hosts[-1].name} -- ping -c1 {dst}")
    if not smoke:
        return
    ok = builder.smoke(topo, say)
    if topo.vpn:
        from ipsecemu.lab import vpn_smoke  # lazy: CLI start-up
        from ipsecemu.lab.state import LabState as _State  # lazy: CLI start-up

        ok &= vpn_smoke.smoke(topo, _State.open(topo.name), say)
        _next_steps(topo)
    if not ok:
        _fail(f"lab {topo.name}: smoke test failed (lab left up; 'ipsecemu lab down {topo.name}')", CheckFailed)


def _dry_run(lab_plan: Any, out_dir: str | None, as_json: bool) -> None:
    """``lab up --dry-run``: the plan on stdout, its generated files under ``out_dir``."""
    from ipsecemu.lab import plan  # lazy: CLI start-up

    written = []
    if out_dir:
        try:
            written = plan.write_files(lab_plan, Path(out_dir))
        except OSError as exc:
            _fail(f"--out {out_dir}: {exc.strerror or exc}", SystemSetupError)
    if as_json:
        click.echo(json.dumps({**plan.plan_json(lab_plan), "written": [str(p) for p in written]}, indent=2))
        return
    click.echo(plan.plan_text(lab_plan))
    if out_dir:
        click.echo(f"wrote {len(written)} generated file(s) under {out_dir}"
                   + "".join(f"\n  {p}" for p in written))
    elif lab_plan.files():
        click.echo(f"({len(lab_plan.files())} generated file(s); --out DIR writes them)")
    click.echo("dry run: nothing built")


@lab.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check_(file: str) -> None:
    """Validate FILE as 'lab up' would (topology, VPN connections, MACsec links, routes), without root
    and without touching the system."""
    from ipsecemu.lab import check  # lazy: keeps 'ipsecemu --help' fast (pulls in the IKE config stack)

    try:
        topo = check.check_file(file)
    except TopologyError as exc:
        _fail(str(exc), ConfigError)
    macsec = sum(lk.macsec is not None for lk in topo.links)
    click.echo(f"{file}: lab {topo.name} OK: {len(topo.nodes)} nodes, {len(topo.links)} links "
               f"({macsec} MACsec), {len(topo.segments)} segment(s), {len(topo.vpn)} VPN connection(s)")


def _next_steps(topo: Any) -> None:
    from ipsecemu.lab import vpn_smoke  # lazy: CLI start-up

    plan = vpn_smoke.smoke_plan(topo)
    lab = topo.name
    gw = next((n for c in topo.vpn for n in c.nodes if topo.node(n).kind == "ipsecemu"), None)
    click.echo(f"\nlab {lab} is up. Next:")
    click.echo(f"  ipsecemu lab status {lab}                 # nodes, tunnels, SAs, counters (--json)")
    if plan:
        (pn, _), (_, rip) = plan["protected"], plan["remote"]
        iface = plan["links"][0] if plan["links"] else "eth0"
        click.echo(f"  ipsecemu lab exec {lab}/{pn} -- ping -c3 {rip}   # through the IPsec tunnels")
        click.echo(f"  ipsecemu lab capture {lab}/{plan['initiator']}:{iface} --duration 5 -w /tmp/{lab}.pcap "
                   f"--keys /tmp/{lab}-keys")
        click.echo(f"  XDG_CONFIG_HOME=/tmp/{lab}-ws sh -c 'mkdir -p $XDG_CONFIG_HOME/wireshark && "
                   f"cp /tmp/{lab}-keys/* $XDG_CONFIG_HOME/wireshark/ && "
                   f"tshark -r /tmp/{lab}.pcap -o esp.enable_encryption_decode:TRUE'")
    if gw:
        click.echo(f"  ipsecemu sa --lab {lab} --node {gw} list          # IKE/Child SAs of one gateway")
    click.echo(f"  ipsecemu lab down {lab}")


# ---------------------------------------------------------------- down


@lab.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Tear down every lab that is up.")
def down(name: str | None, all_: bool) -> None:
    """Remove every netns, link and process of a lab (idempotent)."""
    from ipsecemu.lab import builder  # lazy: CLI start-up

    labs = list_labs()
    if all_:
        targets = labs
    elif name:
        targets = [name]
    elif len(labs) == 1:
        targets = labs
    elif not labs:
        click.echo("no lab is up")
        return
    else:
        _fail(f"several labs are up ({', '.join(labs)}): name one or use --all")
    if not targets:
        click.echo("no lab is up")
        return
    _need_root("lab down")
    for t in targets:
        try:
            builder.teardown(t, lambda m: click.echo(m))
        except LabStateError:
            click.echo(f"lab {t}: not up (nothing to do)")


# ---------------------------------------------------------------- status


def _live_details(ns: str) -> dict[str, Any]:
    from ipsecemu.lab.builder import ipr_in  # lazy: CLI start-up

    with ipr_in(ns) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        ifaces: dict[str, dict[str, Any]] = {}
        for link in ipr.link("dump"):
            ifaces[link.get("ifname")] = {"name": link.get("ifname"), "state": link.get("operstate"),
                                          "addresses": []}
        for a in ipr.addr("dump"):
            n = names.get(a["index"])
            if n in ifaces:
                ifaces[n]["addresses"].append(f"{a.get('address')}/{a['prefixlen']}")
        routes = []
        for r in ipr.route("dump", table=254):
            if r.get("proto") == 2:  # kernel connected routes: implied by addresses
                continue
            dst = f"{r.get('dst')}/{r['dst_len']}" if r.get("dst") else "default"
            hops = [{"via": h.get("gateway"), "dev": names.get(h.get("oif"))} for h in r.get("multipath") or []]
            if not hops:
                hops = [{"via": r.get("gateway"), "dev": names.get(r.get("oif"))}]
            routes.append({"dst": dst, "nexthops": hops})
        return {"interfaces": [v for k, v in ifaces.items() if k != "lo" or v["addresses"]], "routes": routes}


def _lab_status(name: str) -> dict[str, Any]:
    from ipsecemu.lab.errors import BuildError  # lazy: CLI start-up
    from ipsecemu.net.netns import netns_exists  # lazy: CLI start-up

    st = LabState.open(name)
    d = st.data
    root = os.geteuid() == 0
    procs = [{**p, "alive": pid_alive(p["pid"], p.get("start_time"))} for p in d.get("processes", [])]
    nodes = []
    for node, kind in d.get("nodes", {}).items():
        ns = st.node_netns(node)
        entry: dict[str, Any] = {"name": node, "kind": kind, "netns": ns, "netns_present": bool(ns and netns_exists(ns))}
        if kind in VPN_KINDS:
            daemons = [p for p in procs if p.get("node") == node and p["role"] != "capture"]
            entry["vpn"] = "running" if any(p["alive"] for p in daemons) else "no daemon yet"
        if root and entry["netns_present"]:
            try:
                entry.update(_live_details(str(ns)))
            except (OSError, BuildError) as exc:  # netns removed under our feet
                entry["error"] = str(exc)
        nodes.append(entry)
    out = {"name": name, "status": d.get("status"), "source": d.get("source"), "created": d.get("created"),
           "nodes": nodes, "links": d.get("links", []), "processes": procs,
           "live_details": root}
    if any(k in VPN_KINDS for k in d.get("nodes", {}).values()) and root:
        from ipsecemu.lab import svc_vpn  # lazy: CLI start-up

        agent = svc_vpn.read_status(st)
        out["vpn"] = {"tunnels": svc_vpn.tunnel_status(st), "routes": agent.get("routes", []),
                      "up": agent.get("tunnels", {}), "warnings": svc_vpn.warnings(st)}
    if d.get("routing") and root:
        from ipsecemu.lab import svc_frr  # lazy: CLI start-up

        out["routing"] = svc_frr.routing_status(st)
    return out


def _print_routing(r: dict[str, Any]) -> None:
    click.echo("  routing (BGP, FRR):")
    for node, n in r["nodes"].items():
        if "error" in n:
            click.echo(f"    {node:<8} {n['role']:<8} FRR DOWN: {n['error']}")
            continue
        for x in n["sessions"]:
            click.echo(f"    {node:<8} {n['role']:<8} {x['peer']:<15} {x['desc']:<24} {x['state']:<12} "
                       f"pfx in {x['pfx_in']} out {x['pfx_out']}")
        for p in n.get("paths", []):
            click.echo(f"    {node:<8} path     {p['prefix']:<18} {p['path']:<6} via {', '.join(p['via'])}")
    for n in r["nodes"].values():
        for w in n.get("warnings", []):
            click.echo(f"  WARNING: {w}")
    if r.get("fallback"):
        click.echo(f"  FALLBACK: {r['fallback']}")


@lab.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str | None, as_json: bool) -> None:
    """Show labs: nodes, links, addresses, routes, recorded processes."""
    names = [name] if name else list_labs()
    labs = []
    for n in names:
        try:
            labs.append(_lab_status(n))
        except LabStateError as exc:
            _fail(str(exc))
    if as_json:
        click.echo(json.dumps({"labs": labs}, indent=2))
        return
    if not labs:
        click.echo("no lab is up")
        return
    for lb in labs:
        age = time.time() - (lb["created"] or time.time())
        click.echo(f"lab {lb['name']}: {lb['status']} (from {lb['source']}, {age:.0f} s ago)")
        for nd in lb["nodes"]:
            flag = "" if nd["netns_present"] else "  [netns missing]"
            # per-node daemon state, unless the gateways report their tunnels themselves
            vpn = f"  vpn: {nd['vpn']}" if "vpn" in nd and not lb.get("vpn", {}).get("tunnels") else ""
            click.echo(f"  {nd['name']:<10} {nd['kind']:<10} {nd['netns'] or '-'}{flag}{vpn}")
            for i in nd.get("interfaces", []):
                click.echo(f"      {i['name']:<10} {i['state']:<8} {' '.join(i['addresses'])}")
            for r in nd.get("routes", []):
                hops = ", ".join(f"via {h['via']}" if h["via"] else f"dev {h['dev']}" for h in r["nexthops"])
                click.echo(f"      route {r['dst']} {hops}{'  (ECMP)' if len(r['nexthops']) > 1 else ''}")
        click.echo(f"  links: {len(lb['links'])}")
        if "vpn" in lb:
            _print_vpn(lb["vpn"])
        if "routing" in lb:
            _print_routing(lb["routing"])
        for p in lb["processes"]:
            click.echo(f"  pid {p['pid']} {p['role']} on {p.get('node') or '-'}: {'alive' if p['alive'] else 'dead'}")
        if not lb["live_details"]:
            click.echo("  (run as root for live interfaces and routes)")


def _print_vpn(vpn: dict[str, Any]) -> None:
    click.echo("  vpn tunnels:")
    if not vpn["tunnels"]:
        click.echo("    (no gateway answers)")
    for t in vpn["tunnels"]:
        if "error" in t:
            click.echo(f"    {t['node']:<8} DOWN: {t['error']}")
            continue
        click.echo(f"    {t['node']:<8} {t['conn'] or '?':<12} {t['state']:<12} {t['local']} <-> {t['remote']}")
        for c in t["child_sas"]:
            click.echo(f"      child {c['state']:<10} in {c['spi_in']} out {c['spi_out']} {c['proposal'] or ''}"
                       f"  dev {c['tunnel'] or '-'}  in {c['packets_in']} pkts/{c['bytes_in']} B,"
                       f" out {c['packets_out']} pkts/{c['bytes_out']} B")
    for r in vpn["routes"]:
        where = r["netns"] + ("" if r["table"] == 254 else f" table {r['table']}")
        where += f" metric {r['metric']}" if r.get("metric") is not None else ""
        click.echo(f"    route {where}: {r['dst']} -> {', '.join(r['nexthops']) or 'withdrawn'}")
    for w in vpn.get("warnings", []):
        click.echo(f"  WARNING: {w}")


# ---------------------------------------------------------------- exec


@lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("node")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(node: str, cmd: tuple[str, ...]) -> None:
    """Run a command inside a node's netns.

    ipsecemu lab exec [LAB/]NODE -- CMD ...  (LAB/ may be left out when one lab is up)
    """
    _need_root("lab exec")
    st, n = _resolve(node)
    ns = st.node_netns(n)
    args = list(cmd[1:] if cmd and cmd[0] == "--" else cmd)
    if not args:
        raise click.UsageError("no command given (ipsecemu lab exec NODE -- CMD ...)")
    frr_dir = st.dir / n / "frr"
    if args[0] == "vtysh" and (frr_dir / "vtysh.conf").exists():
        # the node's own FRR instance, not the system's /var/run/frr
        args[1:1] = ["--vty_socket", str(frr_dir), "--config_dir", str(frr_dir)]
    sys.stdout.flush()
    try:
        os.execvp("ip", ["ip", "netns", "exec", str(ns), *args])
    except OSError as exc:
        _fail(f"cannot run ip netns exec: {exc.strerror}", SystemSetupError)


# ---------------------------------------------------------------- bgp


@lab.command("bgp", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
def bgp(args: tuple[str, ...]) -> None:
    """vtysh on a routing node's FRR (default: show bgp summary).

    ipsecemu lab bgp [LAB] NODE [-- VTYSH COMMAND ...]   e.g.  lab bgp hub -- show ip route bgp
    """
    _need_root("lab bgp")
    pos = list(args)
    extra: list[str] = []
    if "--" in pos:
        i = pos.index("--")
        pos, extra = pos[:i], pos[i + 1:]
    if len(pos) == 2:
        pos = [f"{pos[0]}/{pos[1]}"]
    if len(pos) != 1:
        raise click.UsageError("ipsecemu lab bgp [LAB] NODE [-- VTYSH COMMAND ...]")
    st, n = _resolve(pos[0])
    frr_dir = st.dir / n / "frr"
    if not (frr_dir / "vtysh.conf").exists():
        _fail(f"node '{n}' of lab '{st.name}' runs no FRR (routing nodes: "
              f"{', '.join(st.data.get('routing') or {}) or 'none'})")
    if not extra:
        extra = ["-c", "show bgp summary"]
    elif not any(a.startswith("-") for a in extra):
        extra = ["-c", " ".join(extra)]
    argv = ["ip", "netns", "exec", str(st.node_netns(n)), "vtysh", "--vty_socket", str(frr_dir),
            "--config_dir", str(frr_dir), *extra]
    sys.stdout.flush()
    try:
        os.execvp("ip", argv)
    except OSError as exc:
        _fail(f"cannot run vtysh: {exc.strerror}", SystemSetupError)


# ---------------------------------------------------------------- capture


@lab.command()
@click.argument("target", metavar="[LAB/]NODE:IFACE")
@click.option("-w", "write", type=click.Path(dir_okay=False), help="pcap file (default LAB-NODE-IFACE.pcap).")
@click.option("--duration", type=click.FloatRange(min=0.1), help="Seconds to capture (default: until Ctrl-C).")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), help="Also write the lab's SA key files here.")
def capture(target: str, write: str | None, duration: float | None, keys_dir: str | None) -> None:
    """tcpdump on NODE:IFACE inside the lab; prints the packet count."""
    from ipsecemu.lab.capture import Capture, CaptureError, export_keys, tshark_hint  # lazy: CLI start-up

    if ":" not in target:
        raise click.UsageError(f"expected NODE:IFACE, got {target!r}")
    _need_root("lab capture")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop tcpdump cleanly on SIGTERM too
    spec, iface = target.rsplit(":", 1)
    st, node = _resolve(spec)
    path = write or f"{st.name}-{node}-{iface}.pcap"
    cap = Capture(st, node, iface, path)
    try:
        cap.start()
    except CaptureError as exc:
        _fail(str(exc))
    click.echo(f"capturing on {st.name}/{node}:{iface} -> {cap.path}"
               f"{f' for {duration:g} s' if duration else ' (Ctrl-C to stop)'}", err=True)
    cap.wait(duration)
    n = cap.stop()
    click.echo(f"{n} packets captured to {cap.path}")
    if keys_dir:
        copied = export_keys(st, keys_dir)
        if copied:
            click.echo(f"keys: wrote {', '.join(str(p) for p in copied)}")
            click.echo(f"decrypt: {tshark_hint(keys_dir, cap.path)}")
        else:
            click.echo("keys: no SAs in this lab yet")


# ---------------------------------------------------------------- audit


@lab.command()
@click.argument("name", required=False)
@click.option("--file", "audit_file", type=click.Path(dir_okay=False),
              help="Take the audit: section from this lab file instead of the one the lab was built from.")
@click.option("--failures", is_flag=True,
              help="Audit again under each single failure (each VPN gateway instance down, each tunnel "
                   "terminated) and print the failure x flow matrix.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit(name: str | None, audit_file: str | None, failures: bool, as_json: bool) -> None:
    """Run the flows of the lab file's audit: section and classify each from captures on the untrusted
    links (encrypted / clear / blocked); exit status 9 when a flow differs from its expectation
    (with --failures: when a flow expected encrypted goes clear under a failure)."""
    from ipsecemu.lab import audit as lab_audit  # lazy: CLI start-up (scapy)
    from ipsecemu.lab import audit_failures, check  # lazy: CLI start-up (the IKE config stack)

    labs = list_labs()
    if name is None:
        if len(labs) != 1:
            _fail("no lab is up" if not labs else f"several labs are up ({', '.join(labs)}): name one")
        name = labs[0]
    _need_root("lab audit")
    try:
        st = LabState.open(name)
    except LabStateError as exc:
        _fail(str(exc))
    source = st.data.get("source") or ""
    if not os.path.isfile(source):  # recorded as given to 'lab up' (maybe relative, or moved since)
        if not audit_file:
            _fail(f"lab {name}: cannot read its lab file {source or '(none recorded)'}; give it with --file")
        source = audit_file
    try:
        topo = check.check_file(source, name=name)
        spec = lab_audit.load_audit_file(audit_file) if audit_file else topo.audit
    except TopologyError as exc:
        _fail(str(exc), ConfigError)
    if spec is None:
        _fail(f"lab {name}: {source} has no 'audit:' section (or give one with --file)", ConfigError)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop captures and servers by PID on SIGTERM too
    if failures:
        try:
            cols = audit_failures.run_failures(topo, st, spec)
        except KeyboardInterrupt:
            raise ExitWithMessage(f"lab {name}: audit interrupted (failure restored, captures and servers "
                                  "stopped)", EXIT_INTERRUPTED) from None
        if as_json:
            click.echo(json.dumps(audit_failures.matrix_dict(cols), indent=2))
        else:
            for line in audit_failures.format_matrix(cols):
                click.echo(line)
        leaks = [f"{x} when {c.failure}" for c in cols for x in c.leaks()]
        if leaks:
            _fail(f"lab {name}: expected encrypted, went clear: {'; '.join(leaks)}", CheckFailed)
        return
    try:
        report = lab_audit.run_audit(topo, st, spec)
    except KeyboardInterrupt:
        raise ExitWithMessage(f"lab {name}: audit interrupted (captures and servers stopped)",
                              EXIT_INTERRUPTED) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in lab_audit.format_report(report):
            click.echo(line)
    if report.mismatches:
        _fail(f"lab {name}: audit failed: " + "; ".join(
            f"{p.src} -> {p.dst} {p.flow.proto}{f'/{p.port}' if p.port else ''} expected {p.flow.expect}, "
            f"observed {p.observed}" for p in report.mismatches), CheckFailed)
