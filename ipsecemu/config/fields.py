"""Field readers of the connection-style configs (IKE connections, gateway files): case- and
``-``/``_``-insensitive keys, typed values, errors located by :class:`_Ctx` as ``file:line: field:``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.config.kit import ConfigFileError, FieldPath, ascii_int, fmt_path


class ConnectionConfigError(ConfigFileError):
    """Invalid connection configuration; the message starts with ``[file:line: ]field:``.  ``file``,
    ``line``, ``field`` (kit form, ``a.b[0]``) and ``message`` are there separately when known."""

    def __init__(self, text: str, *, file: str | None = None, line: int | None = None, field: str = "",
                 message: str | None = None) -> None:
        ConfigError.__init__(self, text)  # the text is already formatted (older callers give only it)
        self.file, self.line, self.field, self.message = file, line, field, message or text


def squash(key: object) -> str:
    """Key normal form: lower case without ``-``, ``_`` or spaces."""
    return re.sub(r"[-_ ]", "", str(key)).lower()


Path_ = tuple[str | int, ...]


class _Ctx:
    """Where the data came from: file name and the YAML line of every (squashed) key path.

    ``base`` is where the connection sits in the file (a lab file's ``vpn.connections[i].config``):
    errors name the user's path, lines are looked up under it.
    """

    def __init__(self, source: str | None = None, lines: dict[FieldPath, int] | None = None,
                 base: FieldPath = ()) -> None:
        self.source = source
        self.base = base
        self.lines = {tuple(squash(x) if isinstance(x, str) else x for x in p): n for p, n in (lines or {}).items()}

    def error(self, path: Path_, message: str) -> ConnectionConfigError:
        where, line = "", None
        full = (*self.base, *path)
        if self.source is not None:
            p = tuple(squash(x) if isinstance(x, str) else x for x in full)
            while line is None:  # the nearest enclosing key with a known line
                line = self.lines.get(p)
                if not p:
                    break
                p = p[:-1]
            where = f"{self.source}:{line}: " if line else f"{self.source}: "
        dotted = ".".join(str(x) for x in full) or "<top>"
        return ConnectionConfigError(f"{where}{dotted}: {message}", file=self.source, line=line,
                                     field=fmt_path(full), message=message)


def _keyed(ctx: _Ctx, path: Path_, data: object, allowed: dict[str, str]) -> dict[str, Any]:
    """Check a mapping's keys against ``allowed`` (squashed -> canonical); return canonical dict."""
    if not isinstance(data, Mapping):
        raise ctx.error(path, f"must be a mapping, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for k, v in data.items():
        canon = allowed.get(squash(k))
        if canon is None:
            names = ", ".join(sorted(set(allowed.values())))
            raise ctx.error((*path, str(k)), f"unknown key; allowed: {names}")
        if canon in out:
            raise ctx.error((*path, str(k)), f"duplicate of {canon}")
        out[canon] = v
    return out


def _canon(*names: str, **aliases: str) -> dict[str, str]:
    table = {squash(n): n for n in names}
    table.update({squash(a): n for a, n in aliases.items()})
    return table


def _int(ctx: _Ctx, path: Path_, v: object, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        n = ascii_int(v) if isinstance(v, str) else None
        if n is None:
            raise ctx.error(path, f"must be an integer, got {v!r}")
        v = n
    if v < lo or (hi is not None and v > hi):
        raise ctx.error(path, f"must be in {lo}..{hi if hi is not None else 'inf'}, got {v}")
    return v


def _bool(ctx: _Ctx, path: Path_, v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("yes", "true", "no", "false"):
        return v.lower() in ("yes", "true")
    raise ctx.error(path, f"must be true or false, got {v!r}")


def _str(ctx: _Ctx, path: Path_, v: object) -> str:
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return str(v)
    raise ctx.error(path, f"must be a string, got {type(v).__name__}")
