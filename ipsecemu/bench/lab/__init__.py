"""``ipsecemu bench lab``: iperf3 TCP throughput through five kinds of path, in one run, on one
topology (:func:`~ipsecemu.lab.harness.pair_topology`: host L - gateway L = gateway R - host R):

* ``plain``: routed in clear, veth with GSO/TSO (64 KiB super-packets: not a fair baseline);
* ``plain-nogso``: routed in clear with ``gso_max_segs 1`` on every veth and MSS 1360, so every
  packet is handled one by one, as in a tunnel;
* ``strongswan``: charon + kernel-libipsec on both gateways (userspace ESP-in-UDP): the baseline;
* ``ipsecemu``: two ``ipsecemu gateway run`` daemons (C batch loop, ESP-in-UDP);
* ``ipsecemu-strongswan``: our daemon on the left, charon on the right.

Each VPN path runs with every cipher (ESP AES-GCM-128/-256), each path with every stream count, in
``rounds`` alternating rounds; a cell's ratio is the median of its per-round ratios to strongSwan
<-> strongSwan (same cipher, streams and round), with min-max.  Alongside each cell we record where
the time goes: CPU seconds per thread of the VPN processes and UDP receive-buffer drops per gateway
netns (``/proc/net/snmp`` ``RcvbufErrors``).  Every process is started and stopped by PID; the
namespaces go on exit, also on Ctrl-C/SIGTERM.

Modules: :mod:`.worker` (iperf3 and the samplers), :mod:`.paths` (bringing each path up and down),
:mod:`.run` (the rounds), :mod:`.report` (cells, ratios, table, JSON, chart), :mod:`.cli`.
"""

from __future__ import annotations

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.lab.cli import command
from ipsecemu.bench.lab.report import (
                                       CIPHERS,
                                       PATHS,
                                       TARGET,
                                       Cell,
                                       add_ratios,
                                       format_table,
                                       report,
                                       summarise,
                                       target,
                                       write_chart,
)
from ipsecemu.bench.lab.run import measure, run

__all__ = ["CIPHERS", "PATHS", "TARGET", "BenchError", "Cell", "add_ratios", "command", "format_table", "measure",
           "report", "run", "summarise", "target", "write_chart"]
