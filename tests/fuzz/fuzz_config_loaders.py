"""Atheris target: the YAML loaders -- lab topology, gateway config, IKE connection config,
MACsec link config.  Byte 0 picks the loader; the rest is the file text (UTF-8, errors replaced).

Each loader is called through ONE adapter below (they are being moved into ``ipsecemu.config``:
only the adapters follow).  Documented outcome: a loaded object, or the project's own error
(``IpsecemuError`` family, ``TopologyError``, the data-plane ``ConfigError``) -- never another
exception type.  Config-loader findings belong to the config work ([fuzz] defect 4).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main  # noqa: E402

from ipsecemu.base.errors import IpsecemuError  # noqa: E402
from ipsecemu.dataplane.api import ConfigError as DataplaneConfigError  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="fuzz-cfg-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def load_lab(text: str) -> object:
    from ipsecemu.lab import topology

    return topology.loads(text, "fuzz.yaml")


def load_gateway(text: str) -> object:
    from ipsecemu.gateway import config

    return config.loads(text, "fuzz.yaml", state_dir=_DIR)


def load_ike(text: str) -> object:
    from ipsecemu.ike import config

    return config.loads(text, "fuzz.yaml")


def load_macsec(text: str) -> object:
    from ipsecemu.config.macsec_link import load_link_config

    path = os.path.join(_DIR, "macsec.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    return load_link_config(path)


LOADERS = (load_lab, load_gateway, load_ike, load_macsec)


def documented() -> tuple[type[BaseException], ...]:
    from ipsecemu.lab.topology import TopologyError

    return (IpsecemuError, DataplaneConfigError, TopologyError)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    try:
        LOADERS[data[0] % len(LOADERS)](text)
    except documented():
        pass


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
