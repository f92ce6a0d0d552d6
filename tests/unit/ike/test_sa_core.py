"""``tasks.core.SaCore`` declares, for the type checker only, the methods one task mixin calls on
another.  mypy checks each implementation against its declaration, but not that one exists: a
renamed or removed mixin method would pass mypy and fail at run time.  These tests close that gap."""

from __future__ import annotations

import ast
import inspect

from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.tasks import core
from ipsecemu.ike.tasks.core import SaCore


def _type_checking_declarations() -> list[str]:
    """Names of the methods in ``SaCore``'s ``if TYPE_CHECKING:`` block."""
    tree = ast.parse(inspect.getsource(core))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SaCore"]
    names = []
    for node in cls.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            names += [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
    return names


def test_declarations_exist() -> None:
    names = _type_checking_declarations()
    assert len(names) >= 10, names  # the block is found and parsed


def test_every_declared_method_is_implemented_by_ikesa_and_not_shadowed_by_the_core() -> None:
    for name in _type_checking_declarations():
        impl = getattr(IkeSa, name, None)
        assert callable(impl), f"SaCore declares {name} but IkeSa has no such method"
        assert name not in vars(SaCore), f"{name} exists on SaCore at run time"
        owner = next(k for k in IkeSa.__mro__ if name in vars(k))
        assert owner is not SaCore and owner is not object
