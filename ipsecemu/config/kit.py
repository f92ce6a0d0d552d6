"""The one validation kit of every user-facing config loader (lab topology, gateway/IKE connections,
MACsec links, Azure JSON import).

:func:`load_yaml` turns YAML text into plain Python values (dict/list/str/int/float/bool/None) plus
the line of every node -- mapping keys, sequence items and scalars alike -- so a loader can name
``file:line: field`` for any mistake.  Every way YAML text can be wrong (syntax, control characters,
empty file, unknown or ill-typed tags such as ``!!int x``, non-scalar keys, recursion) ends in
:class:`ConfigFileError`, never in a PyYAML or builtin exception.  The typed readers (:meth:`Doc.str_`,
:meth:`Doc.int_`...) raise the same error for a value of the wrong shape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ipsecemu.base.errors import ConfigError

FieldPath = tuple[str | int, ...]

# Plain data only: a config never needs !!python/..., !!set, !!binary or custom tags.  Timestamps
# are read back as the text the user wrote (``2024-01-01`` is a string for us).
_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")}
_ASCII_DIGITS = re.compile(r"[0-9]+")


class ConfigFileError(ConfigError):
    """A mistake in a config file: ``file:line: field: message`` (each part when known)."""

    def __init__(self, file: str | None, line: int | None, field: str, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")


def fmt_path(path: FieldPath) -> str:
    """``("links", 3, "endpoints", 1)`` -> ``links[3].endpoints[1]``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class Doc:
    """Values of one document and the line of every field path; the source of located errors.

    ``base`` prefixes every path given to :meth:`error`: a connection's keys inside a lab file live
    under ``vpn.connections[i].config``.
    """

    file: str
    value: Any = None
    lines: dict[FieldPath, int] = field(default_factory=dict)
    base: FieldPath = ()

    def line(self, path: FieldPath) -> int | None:
        """The line of ``path`` or of its nearest enclosing field with a known line."""
        p = (*self.base, *path)
        while p and p not in self.lines:
            p = p[:-1]
        return self.lines.get(p)

    def error(self, path: FieldPath, message: str) -> ConfigFileError:
        return ConfigFileError(self.file, self.line(path) or 1, fmt_path((*self.base, *path)), message)

    def under(self, path: FieldPath) -> Doc:
        """The same document seen from a sub-field (errors keep the full path)."""
        return Doc(self.file, None, self.lines, (*self.base, *path))

    # -- typed readers: each returns the value or raises a located error
    def mapping(self, v: Any, path: FieldPath, what: str = "a mapping") -> dict[Any, Any]:
        if not isinstance(v, dict):
            raise self.error(path, f"must be {what}, got {kind(v)}")
        return v

    def list_(self, v: Any, path: FieldPath) -> list[Any]:
        if not isinstance(v, list):
            raise self.error(path, f"must be a list, got {kind(v)}")
        return v

    def str_(self, v: Any, path: FieldPath) -> str:
        if not isinstance(v, str) or not v:
            raise self.error(path, f"must be a non-empty string, got {kind(v)}")
        return v

    def int_(self, v: Any, path: FieldPath, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.error(path, f"must be an integer in {lo}..{hi}, got {v!r}")
        return v

    def bool_(self, v: Any, path: FieldPath) -> bool:
        if not isinstance(v, bool):
            raise self.error(path, f"must be true or false, got {v!r}")
        return v

    def keys(self, m: Mapping[Any, Any], path: FieldPath, allowed: tuple[str, ...],
             required: tuple[str, ...] = ()) -> None:
        for k in m:
            if k not in allowed:
                raise self.error((*path, k), f"unknown field (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in m:
                raise self.error(path, f"missing field '{k}'")


def kind(v: Any) -> str:
    """A value's type in YAML words, for messages."""
    if v is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(v), type(v).__name__)


def ascii_int(text: str) -> int | None:
    """``"42"`` -> 42; None for anything else (``str.isdigit`` accepts "²", which ``int`` refuses)."""
    s = text.strip()
    return int(s) if _ASCII_DIGITS.fullmatch(s) else None


# ---------------------------------------------------------------- YAML -> Doc


class _Walker:
    """Composed YAML nodes -> plain values, recording lines; each node is built once (aliases share
    the value, which keeps "billion laughs" linear and recursive aliases finite)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[FieldPath, int] = {}
        self._ctor = yaml.constructor.SafeConstructor()
        self._done: dict[int, Any] = {}

    def err(self, node: yaml.Node, path: FieldPath, message: str) -> ConfigFileError:
        return ConfigFileError(self.file, node.start_mark.line + 1, fmt_path(path), message)

    def walk(self, node: yaml.Node, path: FieldPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._done:
            return self._done[id(node)]
        if node.tag not in _PLAIN_TAGS:
            raise self.err(node, path, f"unsupported YAML tag {node.tag} (plain values only)")
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            self._done[id(node)] = out
            self._ctor.flatten_mapping(node)  # "<<" merge keys, as PyYAML's safe loader does
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    raise self.err(knode, path, "keys must be plain scalars, not a mapping or list")
                key = self._scalar(knode, path)
                kpath = (*path, key)
                if key in out:
                    raise self.err(knode, kpath, f"duplicate key (first at line {self.lines.get(kpath)})")
                self.lines[kpath] = knode.start_mark.line + 1
                out[key] = self.walk(vnode, kpath)
            return out
        if isinstance(node, yaml.SequenceNode):
            seq: list[Any] = []
            self._done[id(node)] = seq
            seq.extend(self.walk(v, (*path, i)) for i, v in enumerate(node.value))
            return seq
        value = self._scalar(node, path)
        self._done[id(node)] = value
        return value

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        if node.tag not in _PLAIN_TAGS:
            raise self.err(node, path, f"unsupported YAML tag {node.tag} (plain values only)")
        if node.tag == _TAG + "timestamp":
            return str(node.value)
        try:
            return self._ctor.construct_object(node)
        except (ValueError, IndexError, TypeError, OverflowError, yaml.YAMLError):
            tag = node.tag.removeprefix(_TAG)
            raise self.err(node, path, f"{str(node.value)[:40]!r} is not a valid !!{tag}") from None


def load_yaml(text: str, file: str) -> Doc:
    """YAML text -> :class:`Doc`; every YAML-level mistake is a :class:`ConfigFileError` with a line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigFileError(file, line, "", f"YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:  # control characters, bad encoding: a position, no mark
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigFileError(file, line, "", f"character {exc.character!r} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(file, 1, "", f"YAML error: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigFileError(file, 1, "", "YAML nested too deeply") from None
    if root is None:
        raise ConfigFileError(file, 1, "", "empty file (no YAML document)")
    walker = _Walker(file)
    try:
        value = walker.walk(root, ())
    except RecursionError:
        raise ConfigFileError(file, 1, "", "YAML nested too deeply") from None
    except yaml.MarkedYAMLError as exc:  # e.g. a bad "<<" merge
        mark = exc.problem_mark or exc.context_mark
        raise ConfigFileError(file, mark.line + 1 if mark else 1, "",
                              f"YAML error: {exc.problem or exc.context}") from None
    return Doc(file, value, walker.lines)


def read_text(path: str | os.PathLike[str]) -> str:
    """A config file's text; unreadable or undecodable files are :class:`ConfigFileError`."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(str(path), None, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(str(path), None, "", f"not UTF-8 text (byte {exc.start})") from None


def load_file(path: str | Path) -> Doc:
    return load_yaml(read_text(path), str(path))
