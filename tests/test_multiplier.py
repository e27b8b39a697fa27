# amaranth: UnusedElaboratable=no
"""hw.multiplier.Multiplier: the portable description (Amaranth sim) and the ECP5 MULT18X18D
variant (a behavioural model of the primitive, Verilator/Icarus) give the same product at every
cycle, with random clock enables, for every latency and operand signedness; the ECP5 variant's
parameters; the Lane elaborated for ECP5 runs the random lane program bit-exactly; lint."""
import cocotb
import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Shape, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from cocotb.triggers import FallingEdge

from hw.lane import M_SHAPE, Lane
from hw.multiplier import FabricMultiplier, Multiplier, is_ecp5, product_shape, write_mult18x18d_model
from hw.synth import target_platform
from tb.cocotb_util import load_vectors, save_results, start
from tb.runner import BUILD_DIR, emit, lint, run_cocotb, simulators

# (a_shape, b_shape, latency): the lane's and the MAC's multipliers, the extremes of the
# operand widths, every latency.
BANK = [
    (signed(17), M_SHAPE, 1), (unsigned(16), M_SHAPE, 1), (signed(9), signed(8), 2),
    (signed(18), signed(18), 1), (signed(18), signed(18), 2), (signed(18), signed(18), 3),
    (unsigned(17), signed(18), 2), (unsigned(17), unsigned(17), 3), (unsigned(1), signed(2), 1),
]
CYCLES = 3000
ECP5 = target_platform("ecp5")


def model_path():
    return write_mult18x18d_model(BUILD_DIR / "verilog" / "mult18x18d_model.v")


class _Bank(wiring.Component):
    """Every :data:`BANK` multiplier on the low bits of two shared 18-bit inputs, products
    concatenated on ``p``; with ``ecp5`` a second copy of each, elaborated as its ECP5
    ``MULT18X18D`` whatever the platform, concatenated on ``p_ecp5`` (one build simulates both)."""

    def __init__(self, ecp5=False):
        self.muls = [Multiplier(a_shape=a, b_shape=b, latency=lat) for a, b, lat in BANK]
        self.dsps = [Multiplier(a_shape=a, b_shape=b, latency=lat) for a, b, lat in BANK] if ecp5 else []
        width = sum(len(mul.p) for mul in self.muls)
        super().__init__({"ce": In(1), "a": In(18), "b": In(18), "p": Out(width),
                          **({"p_ecp5": Out(width)} if ecp5 else {})})

    def elaborate(self, platform):
        m = Module()
        for k, (mul, dsp) in enumerate(zip(self.muls, self.dsps or [None] * len(self.muls))):
            m.submodules[f"mul{k}"] = mul
            if dsp is not None:
                m.submodules[f"dsp{k}"] = dsp._elaborate_ecp5()   # the primitive, on any platform
            for x in (mul, dsp) if dsp is not None else (mul,):
                m.d.comb += [x.ce.eq(self.ce), x.a.eq(self.a[:len(x.a)]), x.b.eq(self.b[:len(x.b)])]
        m.d.comb += self.p.eq(Cat(*(mul.p for mul in self.muls)))
        if self.dsps:
            m.d.comb += self.p_ecp5.eq(Cat(*(dsp.p for dsp in self.dsps)))
        return m


def _as(raw, shape):
    shape = Shape.cast(shape)
    v = raw & ((1 << shape.width) - 1)
    return v - (1 << shape.width) if shape.signed and v >> (shape.width - 1) else v


def stimulus(seed=0, n=CYCLES):
    """Random raw operands (a quarter of them at the extremes) and clock enables (70 % on)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 1 << 18, n), rng.integers(0, 1 << 18, n)
    edges = np.array([0, 1, (1 << 17) - 1, 1 << 17, (1 << 18) - 1, 1 << 16, (1 << 16) - 1, 0x100, 0xFF])
    pick = rng.random(n) < 0.25
    a[pick], b[pick] = rng.choice(edges, pick.sum()), rng.choice(edges, pick.sum())
    ce = (rng.random(n) < 0.7).astype(np.int64)
    return a, b, ce


def expected(a, b, ce):
    """p of every BANK multiplier before each cycle's edge (cycle 0: right after reset)."""
    out = np.zeros((len(a), len(BANK)), dtype=object)
    for k, (sa, sb, lat) in enumerate(BANK):
        a_r = b_r = mid = p = 0
        for t in range(len(a)):
            out[t, k] = p
            if ce[t]:
                av, bv = _as(int(a[t]), sa), _as(int(b[t]), sb)
                p, mid, a_r, b_r = ({1: av * bv, 2: a_r * b_r, 3: mid}[lat], a_r * b_r, av, bv)
    return out


def split(words):
    """Flat p words → per-multiplier signed/unsigned values."""
    shapes = [product_shape(a, b) for a, b, _ in BANK]
    out = np.zeros((len(words), len(BANK)), dtype=object)
    for t, w in enumerate(words):
        pos = 0
        for k, sh in enumerate(shapes):
            out[t, k] = _as(int(w) >> pos, sh)
            pos += sh.width
    return out


# ---- cocotb side (run by run_cocotb in a simulator, not collected by pytest) -----------------

@cocotb.test()
async def bank_trace(dut):
    """Drive a, b, ce per cycle after the falling edge; record p before each rising edge."""
    vec = load_vectors()
    dut.a.value = dut.b.value = dut.ce.value = 0
    await start(dut)
    got, got_dsp = [], []
    for a, b, ce in zip(vec["a"], vec["b"], vec["ce"]):
        await FallingEdge(dut.clk)
        got.append(int(dut.p.value))
        got_dsp.append(int(dut.p_ecp5.value))
        dut.a.value, dut.b.value, dut.ce.value = int(a), int(b), int(ce)
    # p is wider than 64 bits: hand it back in 60-bit pieces.
    n = -(-len(dut.p) // 60)
    save_results(**{f"{name}{j}": np.array([(g >> (60 * j)) & ((1 << 60) - 1) for g in trace], dtype=np.int64)
                    for name, trace in (("p", got), ("e", got_dsp)) for j in range(n)})


# ---- pytest side -----------------------------------------------------------------------------

def test_multiplier_params():
    mul = Multiplier(a_shape=signed(17), b_shape=unsigned(16))
    assert (mul.latency, mul.p_shape, mul.a_shape, mul.b_shape) == (2, signed(33), signed(17), unsigned(16))
    assert Multiplier(a_shape=unsigned(17), b_shape=unsigned(17), latency=1).p_shape == unsigned(34)
    with pytest.raises(AttributeError):
        mul.latency = 3
    for bad in (signed(19), unsigned(18), unsigned(0)):
        with pytest.raises(ValueError, match="a_shape"):
            Multiplier(a_shape=bad, b_shape=signed(8))
    with pytest.raises(TypeError, match="b_shape"):
        Multiplier(a_shape=signed(8), b_shape="x")
    for bad, err in ((0, ValueError), (4, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(err, match="latency"):
            Multiplier(a_shape=signed(8), b_shape=signed(8), latency=bad)
    with pytest.raises(TypeError):
        Multiplier(signed(8), signed(8))


def test_multiplier_platform_selection():
    assert is_ecp5(ECP5) and not is_ecp5(None) and target_platform("ice40") is None
    assert is_ecp5(target_platform("ecp5", "um5g-25k"))
    for lat, regs in ((1, ("NONE", "NONE", "NONE", "CLK0")), (2, ("CLK0", "CLK0", "NONE", "CLK0")),
                      (3, ("CLK0", "CLK0", "CLK0", "CLK0"))):
        text = rtlil.convert(Multiplier(a_shape=signed(17), b_shape=unsigned(16), latency=lat), platform=ECP5)
        assert text.count("cell \\MULT18X18D") == 1 and " * " not in text and "$mul" not in text
        for name, want in zip(("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"), regs):
            assert f'parameter \\REG_{name}_CLK "{want}"' in text
        assert "connect \\SIGNEDA 1'1" in text and "connect \\CE0 \\ce" in text
        # Portable elsewhere: a plain multiply, no primitive.
        text = rtlil.convert(Multiplier(a_shape=signed(17), b_shape=unsigned(16), latency=lat))
        assert "MULT18X18D" not in text and "$mul" in text


def test_multiplier_amaranth_sim():
    dut = _Bank()
    a, b, ce = stimulus(1)
    got = []

    async def bench(ctx):
        for t in range(len(a)):
            got.append(ctx.get(dut.p))
            ctx.set(dut.a, int(a[t]))
            ctx.set(dut.b, int(b[t]))
            ctx.set(dut.ce, int(ce[t]))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = expected(a, b, ce)
    assert (split(got) == want).all()
    assert any(v < 0 for v in want[:, 4]) and want[:, 4].max() >= 1 << 34   # signed extremes reached


def test_multiplier_lint():
    lint(emit(_Bank(ecp5=True), "mulbank"), "mulbank", [model_path()])
    lint(emit(Lane(), "lane_ecp5", platform=ECP5), "lane_ecp5", [model_path()])


@pytest.mark.parametrize("simulator", simulators())
def test_multiplier_cocotb_bank(simulator):
    # The portable Verilog and the MULT18X18D instances (on the behavioural model) trace the same
    # products cycle by cycle, from reset on, with random clock enables.
    a, b, ce = stimulus(2)
    res = run_cocotb(_Bank(ecp5=True), "mulbank", "tests.test_multiplier", simulator=simulator,
                     vectors={"a": a, "b": b, "ce": ce}, extra_sources=[model_path()])
    want = expected(a, b, ce)
    n = len(res) // 2
    for name in ("p", "e"):
        words = [sum(int(res[f"{name}{j}"][t]) << (60 * j) for j in range(n)) for t in range(len(a))]
        assert (split(words) == want).all(), name


def test_lane_ecp5_cocotb():
    # The whole lane elaborated for ECP5 (two MULT18X18D with output registers for d·m, one with
    # operand and output registers in the MAC) runs a random lane program and the edge cases
    # bit-exactly through tb/test_lane.py (one simulator: Icarus if present, its build is quick).
    from tests.test_lane import DEPTH, LaneModel, edge_program, packer, random_program
    simulator = "icarus" if "icarus" in simulators() else "verilator"
    lane = Lane(depth=DEPTH)
    prog = random_program(21, 4000) + edge_program(full=False)
    exp = LaneModel(DEPTH).run(prog)
    words = [packer(lane.instr_layout)(ins) for ins in prog]
    mask = (1 << 64) - 1
    run_cocotb(lane, "lane_ecp5", "tb.test_lane", simulator=simulator, platform=ECP5,
               extra_sources=[model_path()],
               vectors={"lo": np.array([w & mask for w in words], dtype=np.uint64),
                        "hi": np.array([w >> 64 for w in words], dtype=np.uint64),
                        "expected": exp})


# ---- FabricMultiplier ------------------------------------------------------------------------

FABRIC_SHAPES = [(signed(33), signed(17)), (unsigned(16), signed(17)), (signed(9), unsigned(8)),
                 (unsigned(5), unsigned(3)), (signed(1), signed(1)), (signed(18), signed(2)),
                 (unsigned(1), signed(6))]


def _range(shape):
    return ((-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed
            else (0, (1 << shape.width) - 1))


@pytest.mark.parametrize("a_shape,b_shape", FABRIC_SHAPES)
def test_fabric_multiplier_exact(a_shape, b_shape):
    """Random operands, the extremes and 0/±1 of both, one product per cycle, latency 3."""
    rng = np.random.default_rng(a_shape.width * 100 + b_shape.width)
    (alo, ahi), (blo, bhi) = _range(a_shape), _range(b_shape)
    edges_a = sorted({alo, ahi, 0, min(ahi, 1), max(alo, -1)})
    edges_b = sorted({blo, bhi, 0, min(bhi, 1), max(blo, -1)})
    pairs = [(x, y) for x in edges_a for y in edges_b]
    pairs += [(int(x), int(y)) for x, y in zip(rng.integers(alo, ahi + 1, 600),
                                               rng.integers(blo, bhi + 1, 600))]
    dut = FabricMultiplier(a_shape=a_shape, b_shape=b_shape)
    assert dut.p_shape == product_shape(a_shape, b_shape) and dut.latency == 3
    got = []

    async def bench(ctx):
        for t in range(len(pairs) + dut.latency):
            if t < len(pairs):
                ctx.set(dut.a, pairs[t][0])
                ctx.set(dut.b, pairs[t][1])
            if t == 0:
                assert ctx.get(dut.p) == 0          # registers reset to 0
            await ctx.tick()
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got[dut.latency - 1:dut.latency - 1 + len(pairs)] == [x * y for x, y in pairs]


def test_fabric_multiplier_has_no_multiplication():
    """Neither the portable nor the ECP5 elaboration contains a `*` (yosys would map it to a
    DSP), and bad shapes are rejected."""
    for platform in (None, ECP5):
        text = rtlil.convert(FabricMultiplier(a_shape=signed(33), b_shape=signed(17)), platform=platform)
        assert "$mul" not in text and "MULT18X18D" not in text
    with pytest.raises(ValueError, match="a_shape"):
        FabricMultiplier(a_shape=signed(65), b_shape=signed(8))
    with pytest.raises(TypeError, match="b_shape"):
        FabricMultiplier(a_shape=signed(8), b_shape="x")
