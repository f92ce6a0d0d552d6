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
    InputError,
    IpsecemuError,
    LabError,
    NeedsRootError,
    SystemSetupError,
)
from ipsecemu.commands.base import ExitWithMessage, Group
from ipsecemu.lab.state import (
    LabState,
    LabStateError,
    builder_died,
    default_lab,
    list_labs,
    pid_alive,
    set_default_lab,
)
from ipsecemu.lab.topology import VPN_KINDS, TopologyError


def _fail(msg: str, family: type[IpsecemuError] = LabError) -> NoReturn:
    """End the command with one line and the family's exit status (commands.base maps it)."""
    raise family(msg)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        _fail(f"{what} needs root (network namespaces); run it with sudo", NeedsRootError)


def _default_lab(what: str) -> str:
    """The lab a command without a lab name acts on: the default lab (the one `make lab` built,
    recorded by `lab up --default`) while it is up, else the only lab up; never a guess among several."""
    name = default_lab()
    if name:
        return name
    labs = list_labs()
    if not labs:
        _fail("no lab is up (ipsecemu lab up FILE)")
    if len(labs) > 1:
        _fail(f"several labs are up ({', '.join(labs)}) and no default lab: {what}")
    return labs[0]


def _resolve(spec: str) -> tuple[LabState, str]:
    """``lab/node``, or ``node`` of the default lab (or of the only lab up)."""
    if "/" in spec:
        lab, node = spec.split("/", 1)
    else:
        lab, node = _default_lab(f"name the node as LAB/{spec}"), spec
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
@click.option("--smoke", is_flag=True,
              help="After building, check traffic: a lab with an audit: section runs its audit (each flow "
                   "expected vs observed from captures, with a reason); otherwise ping between every pair of "
                   "host nodes.  Failure: exit status 9, lab left up.")
@click.option("--dry-run", is_flag=True, help="Print the plan (netns, links, addresses, routes, daemons and their "
              "configs) and build nothing; no root needed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With --dry-run: write the generated configs (gateway.yaml, swanctl.conf, ...) under this dir.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@click.option("--keep-on-failure", is_flag=True, help="If building fails, leave the lab as it is for debugging "
              "(no rollback; 'ipsecemu lab down NAME' removes it).")
@click.option("--default", "make_default", is_flag=True, help="Make this the default lab: commands without a "
              "lab name (lab down, lab exec NODE, sa ...) act on it ('make lab' sets this).")
def up(file: str, name: str | None, smoke: bool, dry_run: bool, out_dir: str | None, as_json: bool,
       keep_on_failure: bool, make_default: bool) -> None:
    """Build the lab described by FILE (YAML) in network namespaces."""
    from ipsecemu.lab import builder, check, plan  # lazy: CLI start-up
    from ipsecemu.lab.errors import BuildError, LabKept  # lazy: CLI start-up

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
        builder.apply(lab_plan, say, keep_on_failure=keep_on_failure)
    except KeyboardInterrupt:
        raise ExitWithMessage(f"lab {topo.name}: interrupted, rolled back (nothing left behind)",
                              EXIT_INTERRUPTED) from None
    except LabKept as exc:
        _fail(f"lab {topo.name}: {exc} (lab kept for debugging: state and logs in {LabState(topo.name).dir}; "
              f"'ipsecemu lab down {topo.name}' removes it)")
    except LabStateError as exc:
        _fail(str(exc))
    except BuildError as exc:
        _fail(f"lab {topo.name}: {exc} (rolled back{'' if exc.logs else '; --keep-on-failure keeps the lab'})")
    except OSError as exc:
        _fail(f"lab {topo.name}: {exc.strerror or exc} (rolled back)", SystemSetupError)
    except IpsecemuError as exc:  # a daemon's own family: keep its exit status; the lab is rolled back
        raise ExitWithMessage(f"lab {topo.name}: {exc} (rolled back)", exc.exit_status) from None
    except Exception as exc:  # an unexpected failure still gets one line; the lab is rolled back
        _fail(f"lab {topo.name}: unexpected {type(exc).__name__}: {exc} (rolled back)")
    if make_default:
        set_default_lab(topo.name)
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
    if len(hosts) >= 2 and not (smoke and topo.vpn):  # with --smoke a VPN lab prints its next steps after it
        dst = ipaddress.ip_interface(hosts[0].addresses[0][1]).ip
        click.echo(f"  try: ipsecemu lab exec {topo.name}/{hosts[-1].name} -- ping -c1 {dst}")
    if not smoke:
        return
    from ipsecemu.lab import smoke as lab_smoke  # lazy: CLI start-up (scapy, via the audit)

    try:
        ok = lab_smoke.smoke(topo, LabState.open(topo.name), say)
    except KeyboardInterrupt:
        raise ExitWithMessage(f"lab {topo.name}: smoke check interrupted (lab left up; to remove it: "
                              f"{_cli()} lab down {topo.name})", EXIT_INTERRUPTED) from None
    if topo.vpn:
        _next_steps(topo)
    if not ok:
        _fail(f"lab {topo.name}: smoke check failed (see the FAILED lines; lab left up; to remove it: "
              f"{_cli()} lab down {topo.name})", CheckFailed)


def _cli() -> str:
    """How to run this CLI as the user can type it (ipsecemu may not be on PATH after make lab)."""
    import shutil  # lazy: only for this message

    return "ipsecemu" if shutil.which("ipsecemu") else f"{sys.executable} -m ipsecemu"


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
    policies = sum(n.ipsec_policy is not None for n in topo.nodes)  # S5 host IPsec policies
    click.echo(f"{file}: lab {topo.name} OK: {len(topo.nodes)} nodes, {len(topo.links)} links "
               f"({macsec} MACsec), {len(topo.segments)} segment(s), {len(topo.vpn)} VPN connection(s)"
               + (f", {policies} host IPsec polic{'y' if policies == 1 else 'ies'}" if policies else ""))


def _next_steps(topo: Any) -> None:
    from ipsecemu.lab import smoke as lab_smoke  # lazy: CLI start-up

    plan = lab_smoke.next_steps_plan(topo)
    lab = topo.name
    gw = next((n for c in topo.vpn for n in c.nodes if topo.node(n).kind == "ipsecemu"), None)
    click.echo(f"\nlab {lab} is up. Next:")
    click.echo(f"  ipsecemu lab status {lab}                 # nodes, tunnels, SAs, counters (--json)")
    if plan:
        (pn, _), (_, rip) = plan["protected"], plan["remote"]
        # several uplinks (ECMP over both ER links): the ESP may take either, so capture it on all
        where = (f"{plan['links'][0]}" if len(plan["links"]) == 1
                 else "any --filter 'udp port 4500 or esp'" if plan["links"] else "eth0")
        click.echo(f"  ipsecemu lab exec {lab}/{pn} -- ping -c3 {rip}   # through the IPsec tunnels")
        click.echo(f"  ipsecemu lab capture {lab}/{plan['initiator']}:{where} --duration 5 -w /tmp/{lab}.pcap "
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
    """Remove every netns, link and process of lab NAME (idempotent).  Without NAME: the default lab
    (the one 'make lab' built)."""
    from ipsecemu.lab import builder  # lazy: CLI start-up

    labs = list_labs()
    if all_:
        targets = labs
    elif name:
        targets = [name]
    elif default_lab():  # never "the only lab up": on a shared box that may be someone else's
        targets = [str(default_lab())]
    elif not labs:
        click.echo("no lab is up")
        return
    else:
        _fail(f"no default lab is up (labs up: {', '.join(labs)}): name the lab (ipsecemu lab down NAME) "
              "or use --all")
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

RTM_F_CLONED = 0x200  # linux/rtnetlink.h: a cached (exception) route, e.g. a learned PMTU


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
            if r["flags"] & RTM_F_CLONED:  # route cache (PMTU/redirect exceptions): not a route anyone set
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
    status, detail = d.get("status"), None
    if builder_died(d):  # `lab up` was killed (SIGKILL, OOM, a closed terminal): it will never finish
        status, detail = "failed", f"builder died; run 'ipsecemu lab down {name}'"
    elif status == "failed" and d.get("error"):  # lab up --keep-on-failure
        detail = f"{' '.join(str(d['error']).split())}; kept for debugging, run 'ipsecemu lab down {name}'"
    out = {"name": name, "status": status, "detail": detail, "source": d.get("source"), "created": d.get("created"),
           "nodes": nodes, "links": d.get("links", []), "processes": procs,
           "live_details": root}
    from ipsecemu.lab import svc_vpn  # lazy: CLI start-up

    if (any(k in VPN_KINDS for k in d.get("nodes", {}).values()) or svc_vpn.has_host_gateways(st)) and root:

        agent = svc_vpn.read_status(st)
        out["vpn"] = {"tunnels": svc_vpn.tunnel_status(st), "routes": agent.get("routes", []),
                      "up": agent.get("tunnels", {}), "warnings": svc_vpn.warnings(st)}
    if d.get("routing") and root:
        from ipsecemu.lab import svc_frr  # lazy: CLI start-up

        out["routing"] = svc_frr.routing_status(st)
    if d.get("impair"):  # impaired links: settings and counters of each element (lab drills)
        from ipsecemu.lab.impair_ctl import status_lines  # lazy: CLI start-up

        out["impair"] = status_lines(st)
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
        detail = f" ({lb['detail']})" if lb.get("detail") else ""
        click.echo(f"lab {lb['name']}: {lb['status']}{detail} (from {lb['source']}, {age:.0f} s ago)")
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
        for line in lb.get("impair", []):
            click.echo(f"  {line}")
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
        if not t["child_sas"] and t["local"] is None:  # the gateway answers, without an SA for it
            click.echo(f"    {t['node']:<8} {t['conn'] or '?':<12} {t['state']:<12} (gateway running, no IKE SA)")
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
@click.option("--filter", "bpf", metavar="EXPR", help="tcpdump filter, e.g. 'udp port 4500 or esp'.")
@click.option("--as-captured", is_flag=True,
              help="Keep UDP GSO/GRO trains (several ESP datagrams in one frame) as tcpdump saw them instead of "
                   "one frame per datagram.")
def capture(target: str, write: str | None, duration: float | None, keys_dir: str | None, bpf: str | None,
            as_captured: bool) -> None:
    """tcpdump on NODE:IFACE inside the lab (IFACE 'any': all of the node's interfaces); prints the
    packet count.

    The gateways send ESP-in-UDP as UDP GSO trains, which a veth carries (and UDP GRO merges) as one
    frame of several ESP datagrams; Wireshark cannot decrypt such a frame.  Unless --as-captured, the
    written file has one frame per datagram, as they would cross a real wire."""
    from ipsecemu.lab.capture import Capture, CaptureError, export_keys, tshark_hint  # lazy: CLI start-up
    from ipsecemu.pcap.coalesced import split_file  # lazy: CLI start-up (scapy)

    if ":" not in target:
        raise click.UsageError(f"expected NODE:IFACE, got {target!r}")
    _need_root("lab capture")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop tcpdump cleanly on SIGTERM too
    spec, iface = target.rsplit(":", 1)
    st, node = _resolve(spec)
    path = write or f"{st.name}-{node}-{iface}.pcap"
    cap = Capture(st, node, iface, path, bpf)
    try:
        cap.start()
    except CaptureError as exc:
        _fail(str(exc))
    click.echo(f"capturing on {st.name}/{node}:{iface} -> {cap.path}"
               f"{f' for {duration:g} s' if duration else ' (Ctrl-C to stop)'}", err=True)
    cap.wait(duration)
    n = cap.stop()
    click.echo(f"{n} packets captured to {cap.path}")
    if not as_captured and n:
        try:
            split = split_file(cap.path)
        except (InputError, OSError) as exc:  # the capture stays as tcpdump wrote it
            click.echo(f"warning: GSO/GRO trains not split: {exc}", err=True)
        else:
            if split.trains:
                click.echo(f"{split.trains} frame(s) held several ESP datagrams (UDP GSO/GRO): written as "
                           f"{split.datagrams} frames, one per datagram (--as-captured keeps them merged)")
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
              help="Audit again under each failure (each VPN gateway instance down, all instances down, each "
                   "tunnel terminated, each ER link down, each MACsec link down; each applied, converged, "
                   "audited, restored) and print the failure x flow matrix.")
@click.option("--only", multiple=True, metavar="TEXT",
              help="With --failures: just the failures whose name contains TEXT (repeatable), e.g. 'MACsec'.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit(name: str | None, audit_file: str | None, failures: bool, only: tuple[str, ...], as_json: bool) -> None:
    """Run the flows of the lab file's audit: section and classify each from captures on the untrusted
    links (encrypted / clear / blocked); exit status 9 when a flow differs from its expectation
    (with --failures: when a flow expected encrypted goes clear under a failure)."""
    from ipsecemu.lab import audit as lab_audit  # lazy: CLI start-up (scapy)
    from ipsecemu.lab import audit_failures, check  # lazy: CLI start-up (the IKE config stack)
    from ipsecemu.lab.capture import CaptureError  # lazy: CLI start-up

    if name is None:
        name = _default_lab("name one")
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
    if only and not failures:
        raise click.UsageError("--only goes with --failures")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop captures and servers by PID on SIGTERM too
    if failures:
        try:
            cols = audit_failures.run_failures(topo, st, spec, only)
        except (audit_failures.FailureError, lab_audit.AuditError, CaptureError) as exc:
            _fail(f"lab {name}: {exc}")
        except KeyboardInterrupt:
            raise ExitWithMessage(f"lab {name}: audit interrupted (failure restored, captures and servers "
                                  "stopped)", EXIT_INTERRUPTED) from None
        if cols[0].report is not None:  # the baseline is what 'lab graph' draws; the matrix rides along
            lab_audit.save_last(st, {**cols[0].report.as_dict(), **audit_failures.matrix_dict(cols)})
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
    except (lab_audit.AuditError, CaptureError) as exc:
        _fail(f"lab {name}: audit could not run: {exc}")
    except KeyboardInterrupt:
        raise ExitWithMessage(f"lab {name}: audit interrupted (captures and servers stopped)",
                              EXIT_INTERRUPTED) from None
    lab_audit.save_last(st, report.as_dict())
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in lab_audit.format_report(report):
            click.echo(line)
    if report.mismatches:
        _fail(f"lab {name}: audit failed: " + "; ".join(
            f"{p.src} -> {p.dst} {p.flow.proto}{f'/{p.port}' if p.port else ''} expected {p.flow.expect}, "
            f"observed {p.observed}" for p in report.mismatches), CheckFailed)


# ---------------------------------------------------------------- graph


@lab.command()
@click.argument("target", metavar="FILE|LAB")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Picture to write: .svg, .png or .dot (default: LAB.svg).")
def graph(target: str, output: str | None) -> None:
    """Draw a lab with Graphviz: nodes by kind, links, segments, IPsec tunnels (dashed), MACsec links
    (blue), untrusted links (red).  For a running LAB: tunnels colored by state (green up, red down) and
    the flows of its last 'lab audit' with their verdicts."""
    from ipsecemu.lab import audit as lab_audit  # lazy: CLI start-up
    from ipsecemu.lab import check  # lazy: CLI start-up (the IKE config stack)
    from ipsecemu.lab import graph as lab_graph  # lazy: CLI start-up

    tunnels: dict[str, bool] | None = None
    last: dict[str, Any] | None = None
    try:
        if os.path.isfile(target) or target not in list_labs():
            if not os.path.isfile(target):
                _fail(f"{target}: no such lab file, and no lab of that name is up "
                      f"(up: {', '.join(list_labs()) or 'none'})")
            topo = check.check_file(target)
        else:
            from ipsecemu.lab import svc_vpn  # lazy: CLI start-up

            st = LabState.open(target)
            source = st.data.get("source") or ""
            if not os.path.isfile(source):
                _fail(f"lab {target}: cannot read its lab file {source or '(none recorded)'}; "
                      "draw the file instead (ipsecemu lab graph FILE)")
            topo = check.check_file(source, name=target)
            tunnels = dict(svc_vpn.read_status(st).get("tunnels") or {}) if topo.vpn else None
            last = lab_audit.load_last(st.dir)
    except TopologyError as exc:
        _fail(str(exc), ConfigError)
    except LabStateError as exc:
        _fail(str(exc))
    out = output or f"{topo.name}.svg"
    path = lab_graph.render(lab_graph.dot_text(topo, tunnels, last), out)
    extra = []
    if tunnels is not None:
        extra.append(f"{sum(tunnels.values())}/{len(tunnels)} tunnel ends up")
    if last is not None:
        extra.append("last audit " + ("passed" if last.get("ok") else "FAILED"))
        nleaks = sum(len(c.get("leaks", [])) for c in last.get("failures", []))
        if nleaks:
            extra.append(f"{nleaks} flow(s) went clear under a failure")
    click.echo(f"lab {topo.name}: picture written to {path}" + (f" ({', '.join(extra)})" if extra else ""))


# ---------------------------------------------------------------- drills (impair, link, node)
# In their own module (commands/lab_drills.py, which does not import this one); registered here.
from ipsecemu.commands.lab_drills import DRILL_COMMANDS  # noqa: E402

for _cmd in DRILL_COMMANDS:
    lab.add_command(_cmd)
