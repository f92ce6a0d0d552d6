"""Live strongSwan as the independent judge of our proposal strings and SA rendering."""

from __future__ import annotations

import pytest

from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()
needs_charon = pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")


