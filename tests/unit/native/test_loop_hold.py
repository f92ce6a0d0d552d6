"""The gateway loop's hand-over at a used-up outbound SA (issue #13, branch rekey0): the packets
of the batch that crossed the hard limit, which the old SA refused, are kept and leave first, in
order, on the SA that replaces it (before: counted encap drops, now and then a lost ping during
a line-rate rekey).  Driven through native/tests/loop_tool.c (the loop's I/O boundary, no
devices), built plain and with ASan+UBSan under gcc and clang."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.native_tools import VARIANTS, program
from support.paths import REPO  # noqa: E402

# xdist: one worker builds and runs loop_tool (two workers would write the same binary at once)
pytestmark = pytest.mark.xdist_group("loop_tool")

SPI_A, SPI_B = 0xAAAA, 0xBBBB


@pytest.fixture(scope="module", params=VARIANTS)
def tool(request: pytest.FixtureRequest) -> Path:
    return program(REPO / "native" / "tests" / "loop_tool.c", request.param)


def hold(tool: Path, *, vnet: int = 0, transport: int = 0, policy: int = 0, batch: int = 8, hard: int = 5,
         n: int = 20) -> tuple[list[list[tuple[int, int, int]]], dict[str, int]]:
    """Batches as sent (before and after the switch: (spi, seq, packet number)) and the stats."""
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([str(tool)], input=f"hold {vnet} {transport} {policy} {batch} {hard} {n}\n",
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and "runtime error" not in res.stderr, res.stderr[-3000:]
    batches: list[list[tuple[int, int, int]]] = []
    stats: dict[str, int] = {}
    for line in res.stdout.splitlines():
        w = line.split()
        if w[0] == "batch":
            batches.append([])
        elif w[0] == "sent":
            assert len(w) == 4, line  # "sent undecryptable V": the peer could not read it
            batches[-1].append((int(w[1], 16), int(w[2]), int(w[3])))
        elif w[0] == "stats":
            stats = {w[i]: int(w[i + 1]) for i in range(1, len(w), 2)}
        else:
            assert w[0] == "switch", line
    return batches, stats


@pytest.mark.parametrize(("vnet", "transport", "policy"), [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_packets_a_used_up_sa_refused_leave_first_on_the_next_sa(tool: Path, vnet: int, transport: int,
                                                                 policy: int) -> None:
    batches, stats = hold(tool, vnet=vnet, transport=transport, policy=policy, batch=8, hard=5, n=20)
    # the first batch of 8: A takes 5 and is used up; 5, 6, 7 wait for B
    assert batches[0] == [(SPI_A, s, s - 1) for s in range(1, 6)]
    after = [p for b in batches[1:] for p in b]
    # B sends them first, then the rest of the tun: every packet once, in order, B's sequence from 1
    assert after == [(SPI_B, i - 4, i) for i in range(5, 20)]
    assert batches[1][:3] == [(SPI_B, 1, 5), (SPI_B, 2, 6), (SPI_B, 3, 7)] and len(batches[1]) == 8
    assert stats == {"tun_rx": 20, "encap_drop": 0, "encap_held": 3, "encap_exhausted": 0}


def test_a_limit_at_the_end_of_a_batch_holds_nothing(tool: Path) -> None:
    batches, stats = hold(tool, batch=4, hard=4, n=6)
    assert [p[2] for p in batches[0]] == [0, 1, 2, 3] and {p[0] for p in batches[0]} == {SPI_A}
    assert [p[:3] for b in batches[1:] for p in b] == [(SPI_B, 1, 4), (SPI_B, 2, 5)]
    assert stats["encap_held"] == 0 and stats["encap_drop"] == 0


def test_a_one_packet_limit_holds_the_rest_of_the_batch(tool: Path) -> None:
    batches, stats = hold(tool, batch=4, hard=0, n=1)  # hard 0: no limit, one packet: control
    assert batches[0] == [(SPI_A, 1, 0)] and stats["encap_held"] == 0
    batches, stats = hold(tool, batch=4, hard=1, n=6)
    assert batches[0] == [(SPI_A, 1, 0)]
    assert [p for b in batches[1:] for p in b] == [(SPI_B, i, i) for i in range(1, 6)]
    assert stats == {"tun_rx": 6, "encap_drop": 0, "encap_held": 3, "encap_exhausted": 0}


def test_a_new_sa_wakes_a_loop_that_holds_packets(tool: Path) -> None:
    """The loop polls without tun interest while it holds packets; the new SA wakes it (an
    eventfd) so they leave at once, not at the next datagram or when poll's timeout (5 s) ends."""
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([str(tool)], input="wake 5000\n", capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and "runtime error" not in res.stderr, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    sent = [tuple(int(x, 16) if i == 0 else int(x) for i, x in enumerate(ln.split()[1:])) for ln in lines
            if ln.startswith("sent ")]
    assert sent == [(SPI_A, s, s - 1) for s in range(1, 6)] + [(SPI_B, 1, 5), (SPI_B, 2, 6), (SPI_B, 3, 7)]
    _, returned, took_ms = lines[-1].split()
    assert int(returned) == 3
    # B comes 50 ms in; without the wake-up the step returns after its 5 s timeout (loose: a busy box)
    assert int(took_ms) < 4000, lines[-1]
