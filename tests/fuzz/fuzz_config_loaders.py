"""Atheris target: the YAML loaders -- lab topology, gateway config, IKE connection config,
MACsec link config, and ``lab check`` (all of them on one lab file).  Byte 0 picks the loader; the
rest is the file text (UTF-8, errors replaced).

Documented outcome: a loaded object, or a ``ConfigError`` whose message starts with ``file:line:``
-- any other exception, or a config error without a line, is a finding ([fuzz] defect 4).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main  # noqa: E402

from ipsecemu.base.errors import ConfigError  # noqa: E402
from ipsecemu.config import connection  # noqa: E402
from ipsecemu.config import gateway as gwconfig  # noqa: E402
from ipsecemu.config.macsec_link import load_link_config  # noqa: E402
from ipsecemu.lab import check, topology  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="fuzz-cfg-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def load_lab(text: str) -> object:
    return topology.loads(text, "fuzz.yaml")


def load_gateway(text: str) -> object:
    return gwconfig.loads(text, "fuzz.yaml", state_dir=_DIR)


def load_ike(text: str) -> object:
    return connection.loads(text, "fuzz.yaml")


def load_macsec(text: str) -> object:
    path = os.path.join(_DIR, "fuzz.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    return load_link_config(path)


def load_lab_check(text: str) -> object:
    return check.check_text(text, "fuzz.yaml")


LOADERS = (load_lab, load_gateway, load_ike, load_macsec, load_lab_check)
_LOCATED = re.compile(r"^(\S*/)?fuzz\.yaml:\d+: ")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    try:
        LOADERS[data[0] % len(LOADERS)](text)
    except ConfigError as exc:
        if not _LOCATED.match(str(exc)):
            raise AssertionError(f"config error without file:line: {exc}") from exc


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
