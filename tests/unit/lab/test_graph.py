"""``ipsecemu lab graph``: a valid picture of every shipped lab (needs Graphviz' ``dot``), the
marks (untrusted red, MACsec blue, tunnels dashed, colored by state) and the last audit table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ipsecemu.lab.check import check_file
from ipsecemu.lab.graph import MACSEC, TUNNEL, UNTRUSTED, DotMissing, GraphError, dot_text, render

from support.paths import REPO  # noqa: E402

LABS = sorted((REPO / "netns-labs").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' not installed (make deps)")


def _parse(svg: Path) -> tuple[set[str], str]:
    """(titles: node ids and edges, all drawn text) of a valid SVG document."""
    root = ET.parse(svg).getroot()  # raises on malformed XML
    assert root.tag == f"{SVG}svg"
    return ({t.text or "" for t in root.iter(f"{SVG}title")},
            "\n".join(t.text or "" for t in root.iter(f"{SVG}text")))


def test_shipped_labs_found() -> None:
    assert {p.stem for p in LABS} >= {"er-vwan", "er-vwan-s3", "er-direct-macsec", "pair"}


@needs_dot
@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_svg_for_every_shipped_lab(lab: Path, tmp_path: Path) -> None:
    topo = check_file(lab)
    out = render(dot_text(topo), tmp_path / "lab.svg")
    titles, text = _parse(out)
    for n in topo.nodes:
        assert n.name in titles, n.name
    for s in topo.segments:
        assert f"segment:{s.name}" in titles
    for c in topo.vpn:
        assert f"IPsec {c.name}" in text
    raw = out.read_text().lower()
    if topo.audit and topo.audit.untrusted:
        assert UNTRUSTED.lower() in raw and "untrusted" in text  # untrusted links drawn red
    if any(lk.macsec is not None for lk in topo.links):
        assert MACSEC.lower() in raw and "MACsec GcmAes" in text


def test_marks_in_dot() -> None:
    topo = check_file(REPO / "netns-labs" / "er-vwan.yaml")
    dot = dot_text(topo)
    assert dot.startswith('graph "er-vwan" {')
    ce_msee1 = next(ln for ln in dot.splitlines() if '"ce" -- "msee1"' in ln)
    assert f'color="{UNTRUSTED}"' in ce_msee1 and "untrusted" in ce_msee1
    lan = next(ln for ln in dot.splitlines() if '"onprem1" -- "ce"' in ln)
    assert UNTRUSTED not in lan  # a trusted link stays plain
    tun = next(ln for ln in dot.splitlines() if "IPsec ce-hubgw0" in ln)
    assert 'style="dashed"' in tun and TUNNEL[None] in tun  # not running: gray


def test_running_lab_colors_and_audit() -> None:
    topo = check_file(REPO / "netns-labs" / "er-vwan.yaml")
    tunnels = {"ce/ce-hubgw0": True, "hubgw0/ce-hubgw0": True, "ce/ce-hubgw1": True, "hubgw1/ce-hubgw1": False}
    audit = {"ok": False, "flows": [
        {"from": "onprem1", "to": "spoke1", "proto": "icmp", "port": None, "expected": "encrypted",
         "observed": "encrypted", "ok": True},
        {"from": "spoke1", "to": "onprem1", "proto": "tcp", "port": 8080, "expected": "encrypted",
         "observed": "clear", "ok": False}]}
    dot = dot_text(topo, tunnels, audit)
    t0 = next(ln for ln in dot.splitlines() if "IPsec ce-hubgw0" in ln)
    t1 = next(ln for ln in dot.splitlines() if "IPsec ce-hubgw1" in ln)
    assert "(up)" in t0 and TUNNEL[True] in t0
    assert "(DOWN)" in t1 and TUNNEL[False] in t1
    assert "last audit: FAILED" in dot and "spoke1 -&gt; onprem1 tcp/8080" in dot and "MISMATCH" in dot
    assert "under 1 failure" not in dot  # a plain audit: no matrix
    audit["failures"] = [{"failure": "none", "leaks": []},
                         {"failure": "hubgw0+hubgw1 down", "leaks": ["spoke1->onprem1 icmp"]}]
    assert "under 1 failure(s): went clear: spoke1-&gt;onprem1 icmp when hubgw0+hubgw1 down" in dot_text(
        topo, tunnels, audit)


@needs_dot
def test_png_and_dot_outputs(tmp_path: Path) -> None:
    topo = check_file(REPO / "netns-labs" / "er-direct-macsec.yaml")
    png = render(dot_text(topo), tmp_path / "lab.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = render(dot_text(topo), tmp_path / "lab.dot")
    assert dot.read_text().startswith('graph "er-direct-macsec" {')


def test_unknown_format_and_missing_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topo = check_file(REPO / "netns-labs" / "pair.yaml")
    with pytest.raises(GraphError, match=r"unknown picture format 'pdf'"):
        render(dot_text(topo), tmp_path / "lab.pdf")
    monkeypatch.setenv("PATH", str(tmp_path))  # no 'dot' here
    with pytest.raises(DotMissing, match=r"apt-get install graphviz.*lab\.dot"):
        render(dot_text(topo), tmp_path / "lab.svg")
    assert DotMissing("x").exit_status == 6
    render(dot_text(topo), tmp_path / "lab.dot")  # the DOT text needs no Graphviz


def test_cli_graph_file_and_errors(tmp_path: Path) -> None:
    def cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"PATH": path} if path is not None else {})}
        return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", "graph", *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path, env=env)

    res = cli(str(REPO / "netns-labs" / "pair.yaml"), "-o", "p.dot")
    assert res.returncode == 0, res.stderr
    assert "lab pair: picture written to p.dot" in res.stdout and (tmp_path / "p.dot").exists()
    res = cli(str(REPO / "netns-labs" / "pair.yaml"), path=str(tmp_path))
    assert res.returncode == 6 and "apt-get install graphviz" in res.stderr and "Traceback" not in res.stderr
    res = cli("no-such-lab")
    assert res.returncode == 8 and "no such lab file, and no lab of that name is up" in res.stderr
    res = cli(str(REPO / "netns-labs" / "pair.yaml"), "-o", "p.pdf")
    assert res.returncode == 8 and "unknown picture format 'pdf'" in res.stderr
