# amaranth: UnusedElaboratable=no
"""hw.mac.MAC against sim.golden.mac / matmul: random dot products of random length K (1…300),
extremes, wrap-around, with back-pressure; lint; cocotb/Verilator with 10^4 sequences."""
import numpy as np
import pytest

from amaranth.lib import data

from hw.mac import MAC, MAC_PAYLOAD, MACOp
from sim.golden import mac, matmul, wrap32
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def pack_beats(a, b, c0, op, last):
    """Pack MAC beats (equal-length int arrays) into payload integers, by the layout's offsets."""
    words = np.zeros(len(a), dtype=np.uint64)
    for name, vals in (("a", a), ("b", b), ("c0", c0), ("op", op), ("last", last)):
        f = MAC_PAYLOAD[name]
        mask = (1 << f.width) - 1
        words |= (np.asarray(vals, dtype=np.int64).astype(np.uint64) & np.uint64(mask)) << np.uint64(f.offset)
    return words


def as_payload(word):
    return data.Const(MAC_PAYLOAD, word)


def random_k(rng, n):
    """Random lengths in 1…300, ``floor(301^(u²))`` for uniform u (mean ≈ 30: many short sums,
    some long, which keeps the 10^4-sequence cocotb run short), plus K = 1 and K = 300."""
    k = np.floor(301.0 ** (rng.random(n) ** 2)).astype(np.int64)
    k = np.clip(k, 1, 300)
    k[:4] = [1, 1, 300, 2]
    return k


def make_sequences(seed, n):
    """``n`` dot-product sequences: random ops/c0/operands plus extreme and wrap-around ones.

    Returns per-beat arrays (a, b, c0, op, last) and the per-sequence list of (start op, c0, a, b).
    """
    rng = np.random.default_rng(seed)
    seqs = []
    for k in random_k(rng, n):
        kind = rng.random()
        if kind < 0.08:      # all-extreme products: (−256)·(−128) = 2^15 every beat
            a = np.full(k, -256)
            b = np.full(k, -128)
        elif kind < 0.12:    # most negative products: 255·(−128)
            a = np.full(k, 255)
            b = np.full(k, -128)
        else:
            a = rng.integers(-256, 256, k)
            b = rng.integers(-128, 128, k)
        op = rng.choice([MACOp.CLEAR.value, MACOp.LOAD.value, MACOp.ACC.value], p=[0.3, 0.6, 0.1])
        r = rng.random()
        if r < 0.15:         # start next to the top/bottom so the sum wraps
            off = int(rng.integers(0, 1 << 20))
            c0 = INT32_MAX - off if rng.random() < 0.5 else INT32_MIN + off
        elif r < 0.25:
            c0 = int(rng.choice([INT32_MIN, INT32_MAX, 0, -1]))
        else:
            c0 = int(rng.integers(INT32_MIN, INT32_MAX, endpoint=True))
        seqs.append((int(op), c0, a, b))
    beats = [[], [], [], [], []]
    for op, c0, a, b in seqs:
        k = len(a)
        beats[0].append(a)
        beats[1].append(b)
        beats[2].append(np.full(k, c0))
        beats[3].append(np.r_[op, np.full(k - 1, MACOp.ACC.value)])
        beats[4].append(np.r_[np.zeros(k - 1, dtype=np.int64), 1])
    return [np.concatenate(x).astype(np.int64) for x in beats], seqs


def expected_by_matmul(seqs):
    """Golden result of each sequence: ``matmul`` of the row with C₀ = the start value."""
    acc, out = 0, []
    for op, c0, a, b in seqs:
        start = {MACOp.CLEAR.value: 0, MACOp.LOAD.value: c0, MACOp.ACC.value: acc}[op]
        acc = int(matmul(a[None, :], b[:, None], c0=np.array([[start]]))[0, 0])
        out.append(acc)
    return np.array(out, dtype=np.int64)


def expected_by_mac(beats):
    """Golden result beat by beat with ``mac`` (slow; for the small Amaranth set)."""
    acc, out = 0, []
    for a, b, c0, op, last in zip(*beats):
        if op == MACOp.CLEAR.value:
            acc = 0
        elif op == MACOp.LOAD.value:
            acc = int(c0)
        acc = int(mac(acc, a, b))
        if last:
            out.append(acc)
    return np.array(out, dtype=np.int64)


def test_golden_mac_wraps():
    assert mac(INT32_MAX, 1, 1) == INT32_MIN
    assert mac(INT32_MIN, -1, 1) == INT32_MAX
    assert mac(0, -256, -128) == 1 << 15
    assert matmul(np.full((1, 3), -256), np.full((3, 1), -128), c0=np.array([[INT32_MAX]]))[0, 0] == \
        wrap32(INT32_MAX + 3 * (1 << 15))


def test_mac_model_agreement():
    # The two golden routes (beat-wise mac, row-wise matmul) agree on the test sequences.
    beats, seqs = make_sequences(11, 60)
    np.testing.assert_array_equal(expected_by_mac(beats), expected_by_matmul(seqs))


def test_mac_amaranth_random_backpressure():
    beats, seqs = make_sequences(1, 150)
    exp = expected_by_mac(beats)
    np.testing.assert_array_equal(exp, expected_by_matmul(seqs))
    words = pack_beats(*beats)
    out = run_stream_test(MAC(), [int(w) for w in words], convert_in=as_payload, n_out=len(exp),
                          stall=0.3, seed=5)
    np.testing.assert_array_equal(np.array(out, dtype=np.int64), exp)


def test_mac_amaranth_k1_and_extremes():
    # Every op with K = 1, consecutive `last` beats, and wrap in both directions, no stalls.
    rows = [
        (MACOp.LOAD, INT32_MAX, [1], [1]),            # wraps to INT32_MIN
        (MACOp.LOAD, INT32_MIN, [1], [-1]),           # wraps to INT32_MAX
        (MACOp.CLEAR, 12345, [-256], [-128]),         # c0 ignored: 2^15
        (MACOp.ACC, 0, [-256], [-128]),               # continues: 2^16
        (MACOp.LOAD, 0, [0], [0]),
        (MACOp.LOAD, -7, [255] * 3, [127] * 3),
        (MACOp.ACC, 0, [255], [-128]),
        (MACOp.CLEAR, 0, [-256] * 300, [-128] * 300),  # 300 · 2^15
        (MACOp.LOAD, INT32_MAX - (1 << 15), [-256] * 3, [-128] * 3),  # wraps on the 2nd beat
    ]
    beats = [[], [], [], [], []]
    for op, c0, a, b in rows:
        for k in range(len(a)):
            beats[0].append(a[k])
            beats[1].append(b[k])
            beats[2].append(c0)
            beats[3].append(op.value if k == 0 else MACOp.ACC.value)
            beats[4].append(int(k == len(a) - 1))
    beats = [np.array(x, dtype=np.int64) for x in beats]
    exp = expected_by_mac(beats)
    assert exp[0] == INT32_MIN and exp[1] == INT32_MAX and exp[2] == 1 << 15 and exp[3] == 1 << 16
    out = run_stream_test(MAC(), [int(w) for w in pack_beats(*beats)], convert_in=as_payload,
                          n_out=len(exp), stall=0.0)
    np.testing.assert_array_equal(np.array(out, dtype=np.int64), exp)


def test_mac_throughput_and_latency():
    # One beat per cycle, result LATENCY cycles after the last beat is accepted.
    from amaranth.sim import Simulator
    dut = MAC()
    k = 50
    beats = [np.full(k, 3), np.full(k, -5), np.zeros(k), np.r_[MACOp.CLEAR.value, np.zeros(k - 1)],
             np.r_[np.zeros(k - 1), 1]]
    words = [int(w) for w in pack_beats(*[np.asarray(x, dtype=np.int64) for x in beats])]
    log = {}

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for n, w in enumerate(words):
            ctx.set(dut.i.payload, as_payload(w))
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            assert ready, f"stalled at beat {n}"
        ctx.set(dut.i.valid, 0)
        for cyc in range(1, 10):
            if ctx.get(dut.o.valid):
                log["latency"] = cyc
                log["value"] = ctx.get(dut.o.payload)
                break
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert log["value"] == k * 3 * -5
    assert log["latency"] == MAC.LATENCY


def test_mac_lint():
    lint(emit(MAC(), "mac"), "mac")


@pytest.mark.parametrize("simulator", simulators())
def test_mac_cocotb_10k_sequences(simulator):
    beats, seqs = make_sequences(2024, 10_000)
    exp = expected_by_matmul(seqs)
    run_cocotb(MAC(), "mac", "tb.test_mac", simulator=simulator,
               vectors={"beats": pack_beats(*beats), "expected": exp})
