"""Atheris target: the IKE message decoder (header, payload chain, SK-inner chains).

Documented outcome for any bytes: a decoded message or ``ParseError`` (a RemoteProtocolError
carrying INVALID_SYNTAX, INVALID_MAJOR_VERSION or UNSUPPORTED_CRITICAL_PAYLOAD).  A decoded
plain message must encode again and decode to the same payload types.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main  # noqa: E402

from ipsecemu.ike import message as m  # noqa: E402
from ipsecemu.ike.consts import Notify  # noqa: E402
from ipsecemu.ike.errors import ParseError  # noqa: E402

NOTIFIES = {Notify.INVALID_SYNTAX, Notify.INVALID_MAJOR_VERSION, Notify.UNSUPPORTED_CRITICAL_PAYLOAD}


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    try:
        msg = m.decode_message(data)
    except ParseError as exc:
        if exc.notify not in NOTIFIES:
            raise AssertionError(f"ParseError with notify {exc.notify}") from exc
        msg = None
    if msg is not None and not any(isinstance(p, m.SK | m.SKF) for p in msg.payloads):
        again = m.decode_message(msg.encode())
        if [p.ptype for p in again.payloads] != [p.ptype for p in msg.payloads]:
            raise AssertionError("decode(encode(msg)) changed the payload chain")
    # the same bytes as an inner (decrypted) chain, first payload type from the first byte
    if data:
        try:
            m.decode_payloads(data[0], data[1:])
        except ParseError:
            pass


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
