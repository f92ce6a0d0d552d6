"""``python -m ipsecemu.bench.ike``: a bench worker (internal: started by the bench inside a netns)."""

from __future__ import annotations

import sys

from ipsecemu.bench.ike.worker import worker_main

sys.exit(worker_main(sys.argv[1:]))
