"""Reading and writing capture key files: the error every key-file reader raises, and the
owner-only writer (key files hold secrets)."""

from __future__ import annotations

from pathlib import Path

from ipsecemu.base.errors import InputError

__all__ = ["KeyFileError", "read_key_text", "write_secret"]


class KeyFileError(InputError):
    """A key file is missing or malformed; the message names the file and line."""


def read_key_text(path: str | Path, what: str) -> str:
    """The text of a key file; a missing or unreadable file is a KeyFileError naming it."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{what} file not found: {p}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} file is a directory: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {what} file {p}: {exc}") from None


def write_secret(path: Path, text: str) -> None:
    """Key files are written owner-readable only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text, encoding="utf-8")
