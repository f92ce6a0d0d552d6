"""``ipsecemu bench dataplane``: packets/s and Gbit/s of the ESP and MACsec transforms on one core,
next to ``openssl speed -evp aes-{128,256}-gcm`` / ``des-ede3-cbc`` run in the same process tree, like
``openssl speed`` for ipsecemu.

Suites: ESP AES-GCM-128, AES-GCM-256, AES-CBC-256 + HMAC-SHA-256-128, 3DES-CBC + HMAC-SHA1-96
(ratio vs DES-EDE3-CBC alone: the HMAC is extra work) (encap, decap); MACsec
GCM-AES-128 and GCM-AES-XPN-256 (protect, validate).  ``size`` is the payload handed to the
transform: the inner IP packet for ESP, the whole Ethernet frame for MACsec; Gbit/s counts
those bytes.

Ratios are measured in alternating rounds (``rounds``, default 5): per packet size, each round runs
``openssl speed`` once per cipher and then every transform cell, so both see the same box state;
a cell reports the round with the median ratio (its ``gbps`` / ``openssl_gbps`` / ``ratio``, so
ratio = gbps / openssl_gbps holds) and the spread over all rounds (``ratio_min`` / ``ratio_max``,
per-round values in ``ratios``).  A single OpenSSL shot made the ratio swing 0.7-1.2 between runs.

Native backend: the C timing loop (``native.bench_esp`` / ``bench_macsec``) when present, so
no Python runs per packet; otherwise (and for the reference backend) batch calls are timed on
pre-built buffers.  Decap/validate must see valid fresh packets every round: the inbound ESP SA
has replay window 0 and the MACsec receiver replay protection off, so one pre-built batch can be
opened again and again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from ipsecemu.base.errors import BenchError
from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.bench.rounds import DEFAULT_ROUNDS, check_rounds, median_index, per_round_ratios, spread
from ipsecemu.dataplane import backend as get_backend

__all__ = ["Suite", "Result", "SUITES", "DEFAULT_SIZES", "DEFAULT_BATCHES", "DEFAULT_ROUNDS", "run", "openssl_speed",
           "format_table"]

DEFAULT_SIZES = (64, 512, 1400)
DEFAULT_BATCHES = (1, 32, 256)
_IPV4_HDR = bytes.fromhex("4500000000000000401100000a0000010a000002")  # payload looks like IPv4


@dataclass(frozen=True)
class Suite:
    protocol: str  # "esp" | "macsec"
    name: str
    openssl: str | None  # openssl speed cipher to compare with
    esp: EspSaConfig | None = None
    macsec: MacsecSaConfig | None = None


def _esp(encr: str, key_len: int, integ: str | None = None, integ_len: int = 0) -> EspSaConfig:
    return EspSaConfig(spi=0x1000, encr=encr, enc_key=bytes(range(1, key_len + 1)), integ=integ,
                       integ_key=bytes(range(100, 100 + integ_len)), replay_window=0)


SUITES: tuple[Suite, ...] = (
    Suite("esp", "aes-gcm-128", "aes-128-gcm", esp=_esp("aes-gcm-16", 20)),
    Suite("esp", "aes-gcm-256", "aes-256-gcm", esp=_esp("aes-gcm-16", 36)),
    Suite("esp", "aes-cbc-256+hmac-sha256-128", None, esp=_esp("aes-cbc", 32, "hmac-sha256-128", 32)),
    # 3DES-SHA1: the Windows host IPsec policy of scenario S5; vs openssl's DES-EDE3-CBC (the cipher only)
    Suite("esp", "3des-cbc+hmac-sha1-96", "des-ede3-cbc", esp=_esp("3des-cbc", 24, "hmac-sha1-96", 20)),
    Suite("macsec", "gcm-aes-128", "aes-128-gcm",
          macsec=MacsecSaConfig("gcm-aes-128", bytes(range(16)), bytes.fromhex("020000000001" "0001"), 0)),
    Suite("macsec", "gcm-aes-xpn-256", "aes-256-gcm",
          macsec=MacsecSaConfig("gcm-aes-xpn-256", bytes(range(32)), bytes.fromhex("020000000001" "0001"), 0,
                                ssci=1, salt=bytes(range(12)))),
)


@dataclass(frozen=True)
class Result:
    protocol: str
    suite: str
    op: str
    size: int
    batch: int
    pps: float
    gbps: float
    openssl_gbps: float | None
    ratio: float | None
    backend: str
    packets: int
    seconds: float
    rounds: int = 1
    ratio_min: float | None = None
    ratio_max: float | None = None
    ratios: tuple[float, ...] = ()  # per round, in round order (rounds where openssl answered)
    gbps_rounds: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ openssl speed
_MR_LINE = re.compile(r"^\+F:\d+:([^:]+):([0-9.]+)")


def openssl_speed(cipher: str, size: int, seconds: int = 1) -> float | None:
    """Gbit/s of ``openssl speed -evp <cipher> -bytes <size>``, or None if openssl is missing or
    its output cannot be parsed."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "speed", "-mr", "-evp", cipher, "-bytes", str(size), "-seconds", str(seconds)],
                              capture_output=True, text=True, timeout=seconds * 10 + 30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_openssl_speed(proc.stdout, cipher)


def parse_openssl_speed(text: str, cipher: str) -> float | None:
    """Parse ``openssl speed -mr`` output ("+F:<n>:<NAME>:<bytes per second>") into Gbit/s."""
    for line in text.splitlines():
        m = _MR_LINE.match(line.strip())
        if m and m.group(1).lower() == cipher.lower():
            return float(m.group(2)) * 8 / 1e9
    return None


# ------------------------------------------------------------------ timing
def _frame(size: int, sci: bytes) -> bytes:
    """An Ethernet frame of ``size`` bytes from the SCI's MAC (so implicit SCIs work too)."""
    head = b"\x02" * 6 + sci[:6] + b"\x08\x00"
    return (head + _IPV4_HDR + bytes(max(0, size)))[:size] if size >= 14 else head[:size]


def _payload(size: int) -> bytes:
    return (_IPV4_HDR + bytes(size))[:size]


def _time_loop(fn: Callable[[], object], budget: float, batch: int) -> tuple[int, float]:
    """Call ``fn`` (one batch) until ``budget`` seconds have passed; (packets, seconds)."""
    fn()  # warm up (key schedules, allocations)
    calls, start = 0, time.perf_counter()
    deadline = start + budget
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls * batch, now - start


def _python_esp(be: ModuleType, cfg: EspSaConfig, size: int, batch: int, budget: float) -> dict[str, tuple[int, float]]:
    out = be.EspOutbound(cfg)
    payloads = [_payload(size)] * batch
    packets = [p for v, p in out.encap_batch(payloads, 4) if v == Verdict.OK]
    if len(packets) != batch:
        raise BenchError("ESP benchmark: encap failed while preparing packets")
    inbound = be.EspInbound(cfg)  # replay_window 0: the same packets decap every round
    if any(r.verdict != Verdict.OK for r in inbound.decap_batch(packets)):
        raise BenchError("ESP benchmark: decap failed while preparing packets")
    return {"encap": _time_loop(lambda: out.encap_batch(payloads, 4), budget, batch),
            "decap": _time_loop(lambda: inbound.decap_batch(packets), budget, batch)}


def _python_macsec(be: ModuleType, sa: MacsecSaConfig, size: int, batch: int,
                   budget: float) -> dict[str, tuple[int, float]]:
    tx = be.MacsecTx(SecYConfig(), sa)
    frames = [_frame(size, sa.sci)] * batch
    protected = [f for v, f in tx.protect_batch(frames) if v == Verdict.OK]
    if len(protected) != batch:
        raise BenchError("MACsec benchmark: protect failed while preparing frames")
    rx = be.MacsecRx(SecYConfig(replay_protect=False))
    rx.add_sa(sa)
    if any(r.verdict != Verdict.OK for r in rx.validate_batch(protected)):
        raise BenchError("MACsec benchmark: validate failed while preparing frames")
    return {"protect": _time_loop(lambda: tx.protect_batch(frames), budget, batch),
            "validate": _time_loop(lambda: rx.validate_batch(protected), budget, batch)}


def _c_loop(bench: Callable[[int], tuple[float, float]], ops: tuple[str, str], batch: int,
            budget: float) -> dict[str, tuple[int, float]]:
    """Drive a C timing helper: calibrate the iteration count on wall-clock time (the helper also
    spends untimed time refilling buffers), then one run of about 2 x budget wall time."""
    iters, enough = 1, min(0.05, budget / 2)
    while True:
        t0 = time.perf_counter()
        bench(iters)
        wall = time.perf_counter() - t0
        if wall >= enough or iters >= 1 << 24:
            break
        iters *= 8 if wall < enough / 10 else 2
    iters = max(1, int(iters * (2 * budget) / max(wall, 1e-9)))
    a, b = bench(iters)
    return {ops[0]: (iters * batch, a), ops[1]: (iters * batch, b)}


def _measure(be: ModuleType, suite: Suite, size: int, batch: int, budget: float) -> dict[str, tuple[int, float]]:
    native = be.__name__.endswith(".native")
    if suite.esp is not None:
        cfg = suite.esp
        helper: Callable[..., tuple[float, float]] | None = getattr(be, "bench_esp", None)
        supported = getattr(be, "native_esp_supported", lambda _c: True)
        if native and helper is not None and supported(cfg):
            esp_bench = helper  # not None here; a lambda would not keep that narrowing
            return _c_loop(lambda n: esp_bench(cfg, size, batch, n), ("encap", "decap"), batch, budget)
        return _python_esp(be, cfg, size, batch, budget)
    sa = suite.macsec
    assert sa is not None
    helper = getattr(be, "bench_macsec", None)
    if native and helper is not None:
        secy = SecYConfig(replay_protect=False)
        return _c_loop(lambda n: helper(secy, sa, size, batch, n), ("protect", "validate"), batch, budget)
    return _python_macsec(be, sa, size, batch, budget)


@dataclass
class _Round:
    packets: int
    seconds: float
    openssl_gbps: float | None

    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def _summarise(suite: Suite, op: str, size: int, batch: int, be_name: str, rounds: list[_Round]) -> Result:
    """One cell over its rounds (:mod:`ipsecemu.bench.rounds`): the round with the median ratio (by
    Gbit/s when OpenSSL never answered), the ratio's min and max over the rounds."""
    gbps = [r.pps() * size * 8 / 1e9 for r in rounds]
    sp = spread(per_round_ratios(gbps, [r.openssl_gbps for r in rounds]))
    pick = sp.pick if sp.pick is not None else median_index(gbps)
    chosen = rounds[pick]
    ossl = chosen.openssl_gbps if sp.pick is not None else None
    return Result(suite.protocol, suite.name, op, size, batch, chosen.pps(), gbps[pick], ossl,
                  gbps[pick] / ossl if ossl else None, be_name, chosen.packets, chosen.seconds,
                  rounds=sp.rounds, ratio_min=sp.ratio_min, ratio_max=sp.ratio_max, ratios=sp.ratios,
                  gbps_rounds=tuple(gbps))


def run(*, backend: str = "native", suites: Sequence[Suite] = SUITES, sizes: Sequence[int] = DEFAULT_SIZES,
        batches: Sequence[int] = DEFAULT_BATCHES, duration: float = 0.4, openssl_seconds: int = 1,
        rounds: int = DEFAULT_ROUNDS, progress: Callable[[str], None] | None = None) -> list[Result]:
    """Measure every (suite, size, batch) in ``rounds`` alternating rounds; ``duration`` seconds per
    operation, cell and round.  ``openssl_seconds`` 0 skips the OpenSSL comparison."""
    check_rounds(rounds)
    be = get_backend(backend)
    be_name = be.__name__.rsplit(".", 1)[-1]
    say = progress or (lambda _msg: None)
    ciphers = sorted({s.openssl for s in suites if s.openssl and openssl_seconds > 0})
    cells: dict[tuple[str, int, int, str], list[_Round]] = {}
    for size in sizes:
        for rnd in range(1, rounds + 1):
            # OpenSSL first, then every transform at this size: one round sees one box state
            ossl: dict[str, float | None] = {}
            for cipher in ciphers:
                say(f"openssl speed -evp {cipher} -bytes {size} (round {rnd}/{rounds})")
                ossl[cipher] = openssl_speed(cipher, size, openssl_seconds)
            for suite in suites:
                for batch in batches:
                    say(f"{suite.protocol} {suite.name} {size} B x {batch} (round {rnd}/{rounds})")
                    for op, (packets, seconds) in _measure(be, suite, size, batch, duration).items():
                        cells.setdefault((suite.name, size, batch, op), []).append(
                            _Round(packets, seconds, ossl.get(suite.openssl) if suite.openssl else None))
    results: list[Result] = []
    for suite in suites:
        for size in sizes:
            for batch in batches:
                for (name, sz, b, op), rs in cells.items():
                    if (name, sz, b) == (suite.name, size, batch):
                        results.append(_summarise(suite, op, size, batch, be_name, rs))
    return results


def format_table(results: Sequence[Result]) -> str:
    head = f"{'protocol':8} {'suite':28} {'op':9} {'size':>5} {'batch':>5} {'pkts/s':>12} {'Gbit/s':>8} " \
           f"{'openssl':>8} {'ratio':>6} {'min-max':>11}"
    lines = [head, "-" * len(head)]
    for r in results:
        ossl = f"{r.openssl_gbps:8.2f}" if r.openssl_gbps else f"{'-':>8}"
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        spread = f"{r.ratio_min:.2f}-{r.ratio_max:.2f}" if r.ratio_min is not None and r.ratio_max is not None else "-"
        lines.append(f"{r.protocol:8} {r.suite:28} {r.op:9} {r.size:5d} {r.batch:5d} {r.pps:12,.0f} "
                     f"{r.gbps:8.2f} {ossl} {ratio} {spread:>11}")
    return "\n".join(lines)
