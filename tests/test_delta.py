# amaranth: UnusedElaboratable=no
"""hw.delta.DeltaEncoder against sim.golden.delta_encode: random token sequences (T ≤ 99,
D ≤ 64), θ ∈ {0, 1, 5, 20, 255}, extremes, all-equal tokens, same-group read-after-write,
run-time θ, back-pressure."""
import numpy as np
import pytest
from amaranth.hdl import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.delta import DeltaEncoder
from sim.golden import delta_encode
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

THETAS = (0, 1, 5, 20, 255)


class WithTheta(wiring.Component):
    """Test fixture: carries θ beside each beat so one stream drives both ``i`` and ``theta``.
    The unit samples θ only on ``first`` beats; the others get random θ to prove it."""

    def __init__(self, dut):
        self.dut = dut
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"beat": dut.i.payload.shape(),
                                                        "theta": unsigned(8)}))),
            "o": Out(stream.Signature(dut.o.payload.shape())),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [
            dut.i.valid.eq(self.i.valid), self.i.ready.eq(dut.i.ready),
            dut.i.payload.eq(self.i.payload.beat), dut.theta.eq(self.i.payload.theta),
        ]
        wiring.connect(m, wiring.flipped(self.o), dut.o)
        return m


def make_tokens(rng, T, D, kind):
    if kind == "uniform":
        return rng.integers(-128, 127, (T, D), endpoint=True)
    if kind == "walk":      # slowly moving features with occasional jumps: θ matters
        steps = rng.integers(-8, 8, (T, D), endpoint=True)
        steps[rng.random((T, D)) < 0.05] *= 12
        return np.clip(rng.integers(-128, 127, (1, D), endpoint=True) + np.cumsum(steps, axis=0), -128, 127)
    if kind == "equal":
        return np.repeat(rng.integers(-128, 127, (1, D), endpoint=True), T, axis=0)
    if kind == "extremes":
        return rng.choice([-128, 127], (T, D))
    raise ValueError(kind)


def sequence_beats(x, theta, lanes, rng, shuffle=True):
    """Beats (and expected outputs) of one token sequence; groups in random order per token."""
    T, D = x.shape
    groups = -(-D // lanes)
    delta, mask, _ = delta_encode(x, theta)
    pad = lambda a: np.pad(a, ((0, 0), (0, groups * lanes - D)))
    xp, dp, mp = pad(x), pad(delta), pad(mask)
    beats, expected = [], []
    for t in range(T):
        order = rng.permutation(groups) if shuffle else range(groups)
        for g in order:
            sl = slice(g * lanes, (g + 1) * lanes)
            first = int(t == 0)
            beats.append({"beat": {"data": xp[t, sl].tolist(), "index": int(g), "first": first},
                          "theta": theta if first else int(rng.integers(256))})
            expected.append((dp[t, sl].tolist(), int(sum(int(b) << k for k, b in enumerate(mp[t, sl]))),
                             int(g), first))
    return beats, expected


def run_delta(dut, beats, *, seed=0, stall=0.3):
    def out(p):
        return [int(v) for v in p.delta], int(p.mask), int(p.index), int(p.first)
    return run_stream_test(WithTheta(dut), beats, convert_out=out, seed=seed, stall=stall)


def random_sequences(seed, n_seq, lanes, max_t=99, max_d=64, kinds=("uniform", "walk", "equal", "extremes")):
    rng = np.random.default_rng(seed)
    beats, expected, seqs = [], [], []
    for k in range(n_seq):
        T, D = int(rng.integers(1, max_t, endpoint=True)), int(rng.integers(1, max_d, endpoint=True))
        theta, kind = THETAS[k % len(THETAS)], kinds[(k // len(THETAS)) % len(kinds)]
        x = make_tokens(rng, T, D, kind)
        b, e = sequence_beats(x, theta, lanes, rng)
        beats += b
        expected += e
        seqs.append((x, theta))
    return beats, expected, seqs


def test_delta_random_sequences():
    # 20 sequences back to back in one stream (each re-initializes X̂ and re-samples θ).
    beats, expected, seqs = random_sequences(1, 20, lanes=8, max_t=40)
    assert {th for _, th in seqs} == set(THETAS)
    assert run_delta(DeltaEncoder(features=64, lanes=8), beats, seed=1) == expected


def test_delta_long_sequences():
    # T = 99, D = 64 (KWT-1's row), every θ, no gaps (stall 0) and with back-pressure.
    rng = np.random.default_rng(2)
    for theta, stall in ((0, 0.0), (5, 0.3), (255, 0.0)):
        x = make_tokens(rng, 99, 64, "walk")
        beats, expected = sequence_beats(x, theta, 16, rng)
        assert run_delta(DeltaEncoder(features=64, lanes=16), beats, seed=theta, stall=stall) == expected


def test_delta_theta0_is_dense():
    # θ = 0: Δ is exactly the dense token difference and cumsum(Δ) = X.
    rng = np.random.default_rng(3)
    x = make_tokens(rng, 30, 24, "uniform")
    x[5] = x[4]                                        # a repeated token gives an all-zero Δ row
    beats, expected = sequence_beats(x, 0, 8, rng, shuffle=False)
    out = run_delta(DeltaEncoder(features=24, lanes=8), beats, seed=3)
    assert out == expected
    delta = np.array([o[0] for o in out]).reshape(30, 24)
    np.testing.assert_array_equal(delta, np.diff(x, axis=0, prepend=0))
    np.testing.assert_array_equal(np.cumsum(delta, axis=0), x)


@pytest.mark.parametrize("theta", [0, 254, 255])
def test_delta_extremes(theta):
    # Alternating −128/127 gives |d| = 255: sent for θ < 255, never for θ = 255. Token 0 holds
    # zeros too (Δ = 0 is not flagged in the mask).
    x = np.tile(np.array([[-128] * 8, [127] * 8]), (10, 1))
    x[0, :3] = 0
    x[1:, 7] = 0
    rng = np.random.default_rng(theta)
    beats, expected = sequence_beats(x, theta, 4, rng)
    assert run_delta(DeltaEncoder(features=8, lanes=4), beats, seed=theta) == expected
    delta, mask, _ = delta_encode(x, theta)
    if theta == 255:
        assert not mask[1:].any()
    else:
        assert (np.abs(delta[1:, 3:7]) == 255).all()


def test_delta_all_equal_tokens():
    # After token 0 nothing is sent, whatever θ.
    rng = np.random.default_rng(4)
    for theta in THETAS:
        x = make_tokens(rng, 12, 20, "equal")
        beats, expected = sequence_beats(x, theta, 4, rng)
        out = run_delta(DeltaEncoder(features=20, lanes=4), beats, seed=theta)
        assert out == expected
        assert all(mask == 0 for _, mask, _, first in out if not first)


@pytest.mark.parametrize("features,lanes,stall", [(4, 4, 0.0), (4, 4, 0.5), (16, 8, 0.0), (3, 1, 0.0),
                                                  (37, 4, 0.3)])
def test_delta_read_after_write(features, lanes, stall):
    # Few groups: the same group returns one to three beats later, while its X̂ write is still
    # in the pipeline (the interlock must hold it back). 37 = 9·4 + 1 has a padded last group.
    beats, expected, _ = random_sequences(features + lanes, 10, lanes=lanes, max_t=60, max_d=features,
                                          kinds=("walk", "uniform"))
    assert run_delta(DeltaEncoder(features=features, lanes=lanes), beats, seed=lanes, stall=stall) == expected


def test_delta_latency_and_theta_port():
    dut = DeltaEncoder(features=4, lanes=2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for payload, theta in [({"data": [10, -10], "index": 0, "first": 1}, 3),
                               ({"data": [13, -14], "index": 0, "first": 0}, 0)]:
            ctx.set(dut.i.payload, payload)
            ctx.set(dut.theta, theta)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)      # the group-0 interlock may hold it back
            ctx.set(dut.i.valid, 0)
            for cycle in range(1, 10):
                if ctx.get(dut.o.valid):
                    delta = [int(v) for v in ctx.get(dut.o.payload.delta)]
                    seen.append((cycle, delta, ctx.get(dut.o.payload.mask)))
                    break
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # θ = 3 was sampled on the first beat: d = 3 is not sent, d = −4 is; θ = 0 later is ignored.
    L = DeltaEncoder.LATENCY
    assert seen == [(L, [10, -10], 0b11), (L, [0, -4], 0b10)]


def test_delta_bad_params():
    with pytest.raises(ValueError, match="features must be at most 1024"):
        DeltaEncoder(features=1025)
    with pytest.raises(ValueError, match="features must be at least 1"):
        DeltaEncoder(features=0)
    with pytest.raises(TypeError, match="lanes must be an integer"):
        DeltaEncoder(lanes="8")
    with pytest.raises(ValueError, match="lanes must be at most 64"):
        DeltaEncoder(lanes=65)
    with pytest.raises(TypeError):
        DeltaEncoder(64, 8)
    dut = DeltaEncoder(features=37, lanes=4)
    assert (dut.features, dut.lanes, dut.groups) == (37, 4, 10)
    with pytest.raises(AttributeError):
        dut.features = 3


@pytest.mark.parametrize("features,lanes", [(64, 8), (1024, 16), (1, 1)])
def test_delta_lint(features, lanes):
    name = f"delta_{features}x{lanes}"
    lint(emit(DeltaEncoder(features=features, lanes=lanes), name), name)


@pytest.mark.parametrize("simulator", simulators())
def test_delta_cocotb(simulator):
    # ≥ 10^4 beats (8·10^4 elements) of random sequences; θ is driven on the port and set to
    # garbage after token 0 to show it is held.
    rng = np.random.default_rng(21)
    lanes = 8
    dut = DeltaEncoder(features=64, lanes=lanes)
    beats, expected, seqs = random_sequences(22, 60, lanes=lanes)
    assert len(beats) >= 10_000
    vectors = {
        "data": np.array([b["beat"]["data"] for b in beats]),
        "index": np.array([b["beat"]["index"] for b in beats]),
        "first": np.array([b["beat"]["first"] for b in beats]),
        "theta": np.array([b["theta"] for b in beats]),
        "garbage": rng.integers(0, 256, len(beats)),
        "delta": np.array([e[0] for e in expected]),
        "mask": np.array([e[1] for e in expected]),
        "shape": np.array([lanes, dut.i.payload.index.shape().width]),
    }
    run_cocotb(dut, "delta", "tb.test_delta", vectors=vectors, simulator=simulator)


def _accept_cycles(dut, payloads, theta=0):
    """Cycles from the first to the last accepted beat with ``i.valid`` held high and
    ``o.ready`` high (no back-pressure)."""
    cycles = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.theta, theta)
        ctx.set(dut.i.valid, 1)
        for payload in payloads:
            ctx.set(dut.i.payload, payload)
            *_, ready = await ctx.tick().sample(dut.i.ready)
            count = 1
            while not ready:
                *_, ready = await ctx.tick().sample(dut.i.ready)
                count += 1
            cycles.append(count)
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return sum(cycles[1:])


@pytest.mark.parametrize("features,lanes,per_beat", [(64, 16, 1), (64, 8, 1), (24, 8, 4 / 3), (4, 4, 4)])
def test_delta_throughput(features, lanes, per_beat):
    # In-order tokens: one beat per cycle for ≥ 4 groups; the interlock slows 3 groups to
    # 3 beats per 4 cycles and a single group to one beat per 4 cycles (documented).
    dut = DeltaEncoder(features=features, lanes=lanes)
    groups = dut.groups
    beats = [{"data": [t] * lanes, "index": g, "first": int(t == 0)}
             for t in range(20) for g in range(groups)]
    assert _accept_cycles(dut, beats) == pytest.approx(per_beat * (len(beats) - 1), abs=4)
