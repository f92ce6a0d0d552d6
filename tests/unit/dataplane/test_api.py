"""Both data-path backends offer every member of the Protocols in dataplane/api.py, with the same
parameters, so the lab and the tests can swap one backend for the other."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType

import pytest

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig
from ipsecemu.dataplane import api, backend

ESP = EspSaConfig(spi=0x1000, encr="aes-gcm-16", enc_key=bytes(20))
MACSEC = MacsecSaConfig(cipher="gcm-aes-128", sak=bytes(16), sci=bytes(range(8)), an=0)
MAKE: dict[type, Callable[[ModuleType], object]] = {
    api.EspOutbound: lambda be: be.EspOutbound(ESP),
    api.EspInbound: lambda be: be.EspInbound(ESP),
    api.EspInboundTable: lambda be: be.EspInboundTable(),
    api.MacsecTx: lambda be: be.MacsecTx(SecYConfig(), MACSEC),
    api.MacsecRx: lambda be: be.MacsecRx(SecYConfig()),
}


@pytest.mark.parametrize("name", ["reference", "native"])
@pytest.mark.parametrize("proto", list(MAKE), ids=lambda p: p.__name__)
def test_backend_class_has_the_protocol(name: str, proto: type) -> None:
    if name == "native":
        pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
    be = backend(name)
    obj = MAKE[proto](be)
    cls = type(obj)
    assert cls is getattr(be, proto.__name__)
    data = [*getattr(proto, "__annotations__", {})]
    data += [k for k, v in vars(proto).items() if isinstance(v, property)]
    for member in data:  # attributes and read-only properties: on the instance, either way
        assert hasattr(obj, member), f"{name}.{proto.__name__} lacks {member}"
    for member, spec in vars(proto).items():
        if member.startswith("_") or not callable(spec):
            continue
        impl = inspect.getattr_static(cls, member, None)
        assert callable(impl), f"{name}.{proto.__name__} lacks {member}()"
        want = list(inspect.signature(spec).parameters)
        got = list(inspect.signature(impl).parameters)
        assert got[: len(want)] == want, f"{name}.{proto.__name__}.{member}{got} != {want}"
