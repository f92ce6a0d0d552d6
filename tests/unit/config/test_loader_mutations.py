"""The class of loader crashes, closed: mutated YAML fed to every config loader (lab topology, lab check,
gateway, IKE connection, MACsec link) ends either in a value or in a ConfigError that names
``file:line`` -- never another exception.  The mutations are the user mistakes issue 9 found
(tagged scalars, ``!!set`` keys, mappings/lists where scalars belong, odd digits, control characters,
empty or truncated files) applied at random places of real, valid configs."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.base.errors import ConfigError
from ipsecemu.config import connection
from ipsecemu.config import gateway as gwconfig
from ipsecemu.config.kit import ConfigFileError, load_yaml
from ipsecemu.config.macsec_link import load_link_config
from ipsecemu.lab import check, topology

from support.gateway_config import GOOD  # noqa: E402
from support.paths import LABS  # noqa: E402

F = "u.yaml"
_STATE = tempfile.mkdtemp(prefix="cfg-mut-")

CONNECTION = """\
connections:
  site:
    local_address: 192.0.2.1
    remote_address: 198.51.100.7
    local_id: fqdn:gw.example
    psk: "s3cret"
    ike_proposals: aes256gcm16-prfsha384-ecp384
    esp_proposals: [aes256gcm16]
    local_ts: ["10.1.0.0/16", {cidr: 10.9.0.0/24, protocol: tcp, ports: 80-90}]
    remote_ts: 10.2.0.0/16
    child_lifetime: {seconds: 3600, kilobytes: 1000}
    nat_t: {ike_port: 500, natt_port: 4500, keepalive: 20}
    dpd: {interval: 10, timeout: 45}
    replay_window: 64
"""
MACSEC = """\
macsec:
  cipher: GcmAesXpn256
  sci_state: Enabled
  cak: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
  ckn: "10"
  replay_window: 64
  validate: strict
  qinq: [10, 20]
  hello_time: 2
"""

# What a careless user (or a fuzzer) puts where a value belongs
NASTY = ["!!int x", '!!float ""', "!!set {a, b}", "{a: 1}", "[a, b]", "[]", "{}", '"²"', "²", "١٢", "\x01",
         "\x7f", "!!binary AAAA", "!!timestamp x", "!custom 1", "!!python/name:os.system", "&a [*a]", "*nope",
         "1e999", "-1", "0x10", "99999999999999999999999", "null", "~", "''", "yes", ".nan", "'\\ud800'",
         "!!str", "!!map []", "!!seq {}", "? [a]\n  : 1", "<<: 1", "<<: *nope", "|\n  x", ">-", "\t", "- - -"]
KEYS = ["? [k]", "!!set {k}", "? {k: 1}", "!!int x", "<<", "dh_grup", "CIPHER", "Psk", "1", "null", "\"\""]


def _mutate(text: str, data: st.DataObject) -> str:
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["value", "key", "drop", "dup", "indent", "cut", "raw"]))
        line = lines[i]
        head, sep, _tail = line.partition(": ")
        if op == "value" and sep:
            lines[i] = f"{head}: {data.draw(st.sampled_from(NASTY))}"
        elif op == "value":
            lines[i] = re.sub(r"(- |\[)\S.*$", lambda m: m.group(1) + data.draw(st.sampled_from(NASTY)), line)
        elif op == "key" and sep:
            indent = line[: len(line) - len(line.lstrip())]
            lines[i] = f"{indent}{data.draw(st.sampled_from(KEYS))}: {_tail}"
        elif op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * data.draw(st.integers(0, 6)) + line.lstrip()
        elif op == "cut":
            lines = lines[:i] + [line[: data.draw(st.integers(0, len(line)))]]
        else:
            pos = data.draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + data.draw(st.text(max_size=6)) + line[pos:]
    return "\n".join(lines) + "\n"


def _macsec_file(text: str) -> object:
    path = os.path.join(_STATE, "link.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    try:
        return load_link_config(path)
    except ConfigError as exc:  # the file is named by its path: bring it to the common form
        raise ConfigError(str(exc).replace(path, F, 1)) from None


LOADERS: dict[str, tuple[Callable[[str], object], str]] = {
    "topology": (lambda t: topology.loads(t, F), (LABS / "er-direct-macsec.yaml").read_text()),
    "lab_check": (lambda t: check.check_text(t, F), (LABS / "er-direct-macsec.yaml").read_text()),
    "gateway": (lambda t: gwconfig.loads(t, F, state_dir=_STATE), GOOD),
    "connection": (lambda t: connection.loads(t, F), CONNECTION),
    "macsec_link": (_macsec_file, MACSEC),
}
LOCATED = re.compile(rf"^{re.escape(F)}:\d+: ")


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_seed_is_valid(name: str) -> None:
    load, seed = LOADERS[name]
    assert load(seed) is not None


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_yaml_gives_a_located_config_error_or_a_value(name: str, data: st.DataObject) -> None:
    load, seed = LOADERS[name]
    text = _mutate(seed, data)
    try:
        load(text)
    except ConfigError as exc:
        msg = str(exc)
        assert LOCATED.match(msg), f"no file:line in {msg!r} for:\n{text}"
        assert "\n" not in msg.rstrip("\n") or "YAML" in msg, msg


@pytest.mark.parametrize("text,line,fragment", [
    ("a: !!int x\n", 1, "not a valid !!int"),
    ("a:\n  b: !!float ''\n", 2, "not a valid !!float"),
    ("? !!set {a}\n: 1\n", 1, "plain scalars"),
    ("a: 1\n\x01\n", 2, "not allowed"),
    ("", 1, "empty file"),
    ("# only a comment\n", 1, "empty file"),
    ("a: !!set {x}\n", 1, "unsupported YAML tag"),
    ("a: &x [*x]\n", None, None),  # a recursive alias loads (finitely); the loaders reject its shape
    ("a: 1\na: 2\n", 2, "duplicate key"),
    ("a: [\n", 2, "YAML syntax error"),
])
def test_kit_locates_yaml_level_mistakes(text: str, line: int | None, fragment: str | None) -> None:
    if fragment is None:
        assert load_yaml(text, F).value["a"][0] is not None
        return
    with pytest.raises(ConfigFileError) as ei:
        load_yaml(text, F)
    assert ei.value.line == line and fragment in ei.value.message and str(ei.value).startswith(f"{F}:{line}: ")


@pytest.mark.parametrize("loader,text,where", [
    ("connection", "remote_address: 1.2.3.4\npsk: x\nreplay_window: !!int x\n", f"{F}:3: replay_window"),
    ("connection", "remote_address: 1.2.3.4\npsk: x\nreplay_window: '²'\n", f"{F}:3: replay_window"),
    ("connection", "- a\n- b\n", f"{F}:1: <top>: the config must be a mapping"),
    ("gateway", GOOD.replace("batch: 64", 'batch: "²"'), f"{F}:4: datapath.batch"),
    ("topology", "name: ab\nnodes: {a: {kind: host}}\nlinks:\n - endpoints: [a:x, a:y]\nsegments: []\n"
                 "vpn: {connections: [{name: c, nodes: [{a: 1}, a], addresses: [1.1.1.1, 1.1.1.2]}]}\n",
     f"{F}:6: vpn.connections[0].nodes[0]"),
    ("topology", "name: ab\nnodes:\n  a:\n    kind: host\n    routes:\n      - {dst: default, dev: [x]}\n"
                 "links:\n - endpoints: [a:x, a:y]\n", f"{F}:6: nodes.a.routes[0].dev"),
    ("topology", "name: ab\nnodes:\n  a:\n    kind: host\n    rules:\n      - {table: 5, iif: [x]}\n"
                 "links:\n - endpoints: [a:x, a:y]\n", f"{F}:6: nodes.a.rules[0].iif"),
    ("macsec_link", "cak: !!int x\n", f"{F}:1: "),
    ("macsec_link", "cipher: [GcmAes128]\ncak: '00112233445566778899aabbccddeeff'\nckn: '01'\n",
     f"{F}:1: macsec.cipher"),
])
def test_issue9_defect4_inputs(loader: str, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as ei:
        LOADERS[loader][0](text)
    assert str(ei.value).startswith(where), str(ei.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    for load in (topology.load, connection.load, load_link_config, gwconfig.load, check.check_file):
        with pytest.raises(ConfigError, match="not UTF-8|cannot read"):
            load(tmp_path / "latin1.yaml")
        with pytest.raises(ConfigError, match="cannot read"):
            load(tmp_path / "missing.yaml")
