"""hw.lane.Lane against a sequential model built on the golden functions (requant, add, mac,
matmul, relu): every op with random and edge operands, a matmul row (MAC then requant), the
softmax exponent step, read-after-write interlock, back-pressure; lint; cocotb/Verilator."""
import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.lane import SAT_RANGE, Lane, LaneOp, Sat
from sim.golden import add, encode_multiplier, mac, matmul, relu, requant, rshift_round, softmax_constants
from sim.golden.fixed import clip
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
EDGE_VALUES = [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1, 127, 128, -128, -129,
               255, 256, -256, -257, 32767, 32768, -32768, -32769, 65535, 65536, 1 << 30, -(1 << 30)]
EDGE_M = [0, 1, 2, 16384, 32767]
EDGE_SH = [0, 1, 2, 15, 16, 31, 32, 46, 47]
MAC_OPS = (LaneOp.MAC, LaneOp.MACI, LaneOp.MACM)
DEPTH = 64


def instr(op, *, rx=0, ry=0, rd=0, we=0, emit=1, a=0, b=0, m=1, sh=0, imm=0, sat=Sat.INT32):
    return dict(op=op, rx=rx, ry=ry, rd=rd, we=we, emit=emit, a=a, b=b, m=m, sh=sh, imm=imm, sat=sat)


def pack(layout, ins):
    """Payload integer of one instruction (fields at the layout's offsets)."""
    word = 0
    for name, field in layout:
        v = ins[name]
        v = v.value if hasattr(v, "value") else int(v)
        word |= (v & ((1 << field.width) - 1)) << field.offset
    return word


class LaneModel:
    """The lane executed one instruction at a time, numerics from sim.golden."""

    def __init__(self, depth):
        self.mem = [0] * depth
        self.acc = 0

    def result(self, ins):
        op, x, y, imm = ins["op"], self.mem[ins["rx"]], self.mem[ins["ry"]], ins["imm"]
        if op in MAC_OPS:
            start = {LaneOp.MAC: self.acc, LaneOp.MACI: imm, LaneOp.MACM: x}[op]
            self.acc = int(mac(start, ins["a"], ins["b"]))
            return self.acc
        m, sh = ins["m"], ins["sh"]
        sat = ins["sat"]
        relu_after = sat in (Sat.RELU8, Sat.RELU16)
        lo, hi = SAT_RANGE[{Sat.RELU8: Sat.INT8, Sat.RELU16: Sat.INT16}.get(sat, sat)]
        if op == LaneOp.REQ:
            r = requant(x, m, sh, lo, hi)
        elif op == LaneOp.ADD:
            r = add(y, x, m, sh, lo, hi)
        elif op == LaneOp.ADDI:
            r = add(imm, x, m, sh, lo, hi)
        else:
            d = {
                LaneOp.LDI: imm, LaneOp.SUB: x - y, LaneOp.SUBI: x - imm, LaneOp.RSUBI: imm - x,
                LaneOp.MAX: max(x, y), LaneOp.MAXI: max(x, imm), LaneOp.LT: int(x < y),
                LaneOp.LTI: int(x < imm), LaneOp.GTI: int(x > imm), LaneOp.SEL: x if y != 0 else imm,
            }[op]
            r = clip(rshift_round(d * m, sh), lo, hi)
        return int(relu(r) if relu_after else r)

    def run(self, prog):
        out = []
        for ins in prog:
            if ins["op"] == LaneOp.NOP:
                continue
            r = self.result(ins)
            if ins["we"]:
                self.mem[ins["rd"]] = r
            if ins["emit"]:
                out.append(r)
        return out


def run_amaranth(prog, *, depth=DEPTH, stall=0.3, seed=0):
    dut = Lane(depth=depth)
    n_out = sum(1 for ins in prog if ins["emit"] and ins["op"] != LaneOp.NOP)
    words = [pack(dut.instr_layout, ins) for ins in prog]
    out = run_stream_test(dut, words, convert_in=lambda w: data.Const(dut.instr_layout, w),
                          n_out=n_out, stall=stall, seed=seed)
    return np.array(out, dtype=np.int64)


def check(prog, *, depth=DEPTH, stall=0.3, seed=0):
    exp = np.array(LaneModel(depth).run(prog), dtype=np.int64)
    out = run_amaranth(prog, depth=depth, stall=stall, seed=seed)
    bad = np.nonzero(out != exp)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first output #{bad[0]}: {out[bad[0]]} != {exp[bad[0]]}"
    return exp


# ---- programs -------------------------------------------------------------------------------

def rand_value(rng):
    r = rng.random()
    if r < 0.3:
        return int(rng.integers(INT32_MIN, INT32_MAX, endpoint=True))
    if r < 0.5:
        return int(rng.integers(-32768, 32768))
    if r < 0.7:
        return int(rng.integers(-128, 128))
    if r < 0.85:
        return int(rng.choice(EDGE_VALUES))
    return int(rng.integers(-1000, 1001))


def rand_scale(rng, x):
    """(m, sh): edge values, uniform ones, or ones that bring |x·m| near an int8/int16 range."""
    m = int(rng.choice(EDGE_M)) if rng.random() < 0.3 else int(rng.integers(0, 1 << 15))
    r = rng.random()
    if r < 0.3:
        sh = int(rng.choice(EDGE_SH))
    elif r < 0.6:
        sh = int(rng.integers(0, 48))
    else:
        bits = (abs(x) * m).bit_length()
        sh = int(np.clip(bits - int(rng.choice([7, 8, 15, 16])) + int(rng.integers(-2, 3)), 0, 47))
    return m, sh


OP_WEIGHTS = {  # REQ and ADD carry the most numerics
    LaneOp.REQ: 9, LaneOp.ADD: 9, LaneOp.ADDI: 2, LaneOp.LDI: 2, LaneOp.SUB: 2, LaneOp.SUBI: 1,
    LaneOp.RSUBI: 2, LaneOp.MAX: 1, LaneOp.MAXI: 1, LaneOp.LT: 1, LaneOp.LTI: 1, LaneOp.GTI: 1,
    LaneOp.SEL: 1, LaneOp.MAC: 2, LaneOp.MACI: 1, LaneOp.MACM: 1, LaneOp.NOP: 0.3,
}


def random_program(seed, n, *, depth=DEPTH, addr_span=None):
    """Fill the storage, then ``n`` random instructions: random addresses (so some read what
    an instruction in flight writes), random write/emit flags, operands and scales."""
    rng = np.random.default_rng(seed)
    span = addr_span or depth
    model = LaneModel(depth)
    prog = []

    def push(ins):
        prog.append(ins)
        model.run([ins])

    for k in range(depth):
        push(instr(LaneOp.LDI, imm=rand_value(rng), rd=k, we=1, emit=int(rng.random() < 0.1)))
    ops = list(OP_WEIGHTS)
    p = np.array(list(OP_WEIGHTS.values()), dtype=np.float64)
    p /= p.sum()
    for _ in range(n):
        op = ops[rng.choice(len(ops), p=p)]
        rx, ry = (int(v) for v in rng.integers(0, span, 2))
        x = model.mem[rx]
        imm = rand_value(rng)
        if op in (LaneOp.RSUBI, LaneOp.SUBI) and rng.random() < 0.5:
            imm = int(rng.choice(EDGE_VALUES))
        if op == LaneOp.SEL and rng.random() < 0.5:
            ry = rx if model.mem[rx] == 0 else ry   # exercise the zero-mask side
        m, sh = rand_scale(rng, x if op not in (LaneOp.LDI,) else imm)
        if op in (LaneOp.MAX, LaneOp.MAXI, LaneOp.LT, LaneOp.LTI, LaneOp.GTI, LaneOp.SEL, LaneOp.SUB) \
                and rng.random() < 0.5:
            m, sh = 1, 0
        push(instr(op, rx=rx, ry=ry, rd=int(rng.integers(0, span)), we=int(rng.random() < 0.35),
                   emit=int(rng.random() < 0.9), a=int(rng.integers(-256, 256)), b=int(rng.integers(-128, 128)),
                   m=m, sh=sh, imm=imm, sat=Sat(int(rng.integers(0, 8)))))
    return prog


def edge_program():
    """Every non-MAC op over edge operands × edge scales × every saturation range."""
    prog = [instr(LaneOp.LDI, imm=v, rd=k, we=1, emit=0) for k, v in enumerate(EDGE_VALUES)]
    n = len(EDGE_VALUES)
    for sat in Sat:
        for m in EDGE_M:
            for sh in (0, 1, 15, 31, 47):
                for k in range(n):
                    prog.append(instr(LaneOp.REQ, rx=k, m=m, sh=sh, sat=sat))
                    prog.append(instr(LaneOp.ADD, rx=k, ry=(k * 7 + 3) % n, m=m, sh=sh, sat=sat))
    for sat in (Sat.INT8, Sat.INT16, Sat.INT32, Sat.UINT16):
        for k in range(n):
            for j in (0, 2, 5, 9, n - 1):
                prog.append(instr(LaneOp.SUB, rx=k, ry=j, sat=sat))
                prog.append(instr(LaneOp.RSUBI, rx=k, imm=EDGE_VALUES[j], m=32767, sh=16, sat=sat))
    for op in (LaneOp.ADDI, LaneOp.SUBI, LaneOp.MAXI, LaneOp.LTI, LaneOp.GTI, LaneOp.MAX, LaneOp.LT, LaneOp.SEL,
               LaneOp.LDI):
        for k in range(n):
            for j in (0, 4, 6):
                prog.append(instr(op, rx=k, ry=j, imm=EDGE_VALUES[(k + j) % n], sat=Sat.INT32))
    prog.append(instr(LaneOp.SEL, rx=1, ry=4, imm=99))  # mem[4] == 0: selects imm
    return prog


def matmul_row_program(a, b, c0, m, sh, sat=Sat.INT8, *, c0_in_mem=False):
    """``requant(A·B + C₀)`` for one A row, column j at address j: MACI/MACM … MAC(we) per column,
    then an in-place REQ per column that emits."""
    k_len, n = b.shape
    prog = []
    if c0_in_mem:
        prog += [instr(LaneOp.LDI, imm=int(c0[j]), rd=j, we=1, emit=0) for j in range(n)]
    for j in range(n):
        for k in range(k_len):
            op = (LaneOp.MACM if c0_in_mem else LaneOp.MACI) if k == 0 else LaneOp.MAC
            prog.append(instr(op, rx=j, a=int(a[k]), b=int(b[k, j]), imm=int(c0[j]), rd=j,
                              we=int(k == k_len - 1), emit=0))
    prog += [instr(LaneOp.REQ, rx=j, rd=j, we=1, m=int(m[j]), sh=int(sh[j]), sat=sat) for j in range(n)]
    return prog


# ---- tests ----------------------------------------------------------------------------------

def test_lane_params():
    lane = Lane(depth=16)
    assert lane.depth == 16 and lane.addr_width == 4 and Lane().depth == 64
    assert lane.instr_layout["rx"].width == 4
    with pytest.raises(AttributeError):
        lane.depth = 32
    for bad, err in ((63, ValueError), (1, ValueError), (8192, ValueError), (0, ValueError),
                     ("64", TypeError), (64.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="depth"):
            Lane(depth=bad)
    with pytest.raises(TypeError):
        Lane(64)


def test_lane_model_matches_golden_formulas():
    # The model's ReLU saturation equals golden relu(requant(...)) with the int8 range.
    lm = LaneModel(4)
    for x in EDGE_VALUES:
        lm.mem[0] = x
        for m, sh in ((1, 0), (32767, 47), (1000, 10)):
            r = lm.result(instr(LaneOp.REQ, m=m, sh=sh, sat=Sat.RELU8))
            assert r == int(np.clip(requant(x, m, sh, -128, 127), 0, 127))


def test_lane_random_ops_backpressure():
    check(random_program(1, 2500), stall=0.3, seed=1)


def test_lane_random_ops_hot_addresses():
    # Four addresses only: most instructions depend on one in flight (interlock).
    check(random_program(2, 800, addr_span=4), stall=0.2, seed=2)


def test_lane_edge_cases():
    exp = check(edge_program(), stall=0.1, seed=3)
    assert {-128, 127, -32768, 32767, INT32_MIN, INT32_MAX, 0, 65535} <= set(exp.tolist())


def test_lane_matmul_row_then_requant():
    rng = np.random.default_rng(4)
    k_len, n = 37, 24
    a = rng.integers(-256, 256, k_len)
    a[:3] = -256
    b = rng.integers(-128, 128, (k_len, n))
    b[:3, 0] = -128
    c0 = rng.integers(-(1 << 20), 1 << 20, n)
    acc = matmul(a[None, :], b, c0[None, :])
    m, sh = encode_multiplier(127.0 / np.maximum(np.abs(acc[0]), 1) * rng.uniform(0.3, 1.3, n))
    want = requant(acc, m, sh, -128, 127)[0]
    prog = matmul_row_program(a, b, c0, m, sh)
    out = run_amaranth(prog, stall=0.3, seed=4)
    np.testing.assert_array_equal(out, want)
    assert np.any(np.abs(want) < 127) and np.any((want == 127) | (want == -128))  # both regimes
    # Same row with C₀ preloaded in storage (MACM) and into int16.
    want16 = requant(acc, m, np.maximum(sh - 8, 0), -32768, 32767)[0]
    prog = matmul_row_program(a, b, c0, m, np.maximum(sh - 8, 0), Sat.INT16, c0_in_mem=True)
    np.testing.assert_array_equal(run_amaranth(prog, stall=0.3, seed=5), want16)


def test_lane_k1_matmul_and_delta_update():
    # K = 1 sums, then a delta update y ← y + Δ·W accumulated onto the stored result (MACM).
    rng = np.random.default_rng(6)
    n = 16
    a1, b1, c0 = rng.integers(-256, 256, 1), rng.integers(-128, 128, (1, n)), rng.integers(-1000, 1000, n)
    a2, b2 = rng.integers(-256, 256, 5), rng.integers(-128, 128, (5, n))
    y1 = matmul(a1[None, :], b1, c0[None, :])[0]
    y2 = matmul(a2[None, :], b2, y1[None, :])[0]
    prog = matmul_row_program(a1, b1, c0, np.ones(n, int), np.zeros(n, int), Sat.INT32)
    for j in range(n):
        for k in range(5):
            prog.append(instr(LaneOp.MACM if k == 0 else LaneOp.MAC, rx=j, rd=j, a=int(a2[k]), b=int(b2[k, j]),
                              we=int(k == 4), emit=int(k == 4)))
    np.testing.assert_array_equal(run_amaranth(prog, stall=0.2, seed=6), np.r_[y1, y2])


def test_lane_softmax_exponent_step():
    # u_j = min(65535, rshift_round((M − S_j)·c_e, sh_e)) by RSUBI, M − S_j up to 2^32 − 1.
    rng = np.random.default_rng(7)
    s = np.r_[INT32_MIN, INT32_MAX, rng.integers(INT32_MIN, INT32_MAX, 20), 5, 5].astype(np.int64)
    mx = int(s.max())
    prog = [instr(LaneOp.LDI, imm=int(v), rd=j, we=1, emit=0) for j, v in enumerate(s)]
    want = []
    for scale in (2.0 ** -30, 1e-6, 0.01, 1.0):
        c_e, sh_e = softmax_constants(scale)
        want += list(np.minimum(65535, rshift_round((mx - s) * c_e, sh_e)))
        prog += [instr(LaneOp.RSUBI, rx=j, imm=mx, m=c_e, sh=sh_e, sat=Sat.UINT16) for j in range(len(s))]
    np.testing.assert_array_equal(run_amaranth(prog, stall=0.2, seed=7), want)


def test_lane_relu():
    xs = [INT32_MIN, -129, -128, -1, 0, 1, 127, 128, INT32_MAX, 40000, -40000]
    prog = [instr(LaneOp.LDI, imm=v, rd=j, we=1, emit=0) for j, v in enumerate(xs)]
    prog += [instr(LaneOp.MAXI, rx=j, imm=0) for j in range(len(xs))]
    prog += [instr(LaneOp.REQ, rx=j, m=3, sh=1, sat=Sat.RELU8) for j in range(len(xs))]
    prog += [instr(LaneOp.REQ, rx=j, m=3, sh=1, sat=Sat.RELU16) for j in range(len(xs))]
    x = np.array(xs)
    want = np.r_[relu(x), relu(requant(x, 3, 1, -128, 127)), relu(requant(x, 3, 1, -32768, 32767))]
    np.testing.assert_array_equal(run_amaranth(prog, stall=0.2, seed=8), want)


def test_lane_dependent_chain_and_silent_ops():
    # Each instruction reads what the previous one wrote; NOPs and emit = 0 ops leave no output.
    prog = [instr(LaneOp.LDI, imm=1000, rd=0, we=1, emit=0),
            instr(LaneOp.REQ, rx=0, rd=1, we=1, m=3, sh=1),             # 1500
            instr(LaneOp.ADD, rx=0, ry=1, rd=1, we=1, m=1, sh=0),        # 2500
            instr(LaneOp.NOP, rd=1, we=1),                               # no write
            instr(LaneOp.SUB, rx=1, ry=0, rd=2, we=1, emit=0),           # 1500
            instr(LaneOp.MAX, rx=2, ry=1, rd=2, we=1),                   # 2500
            instr(LaneOp.MACM, rx=2, a=-256, b=-128, rd=3, we=1),        # 2500 + 32768
            instr(LaneOp.MAC, a=1, b=1, rd=3, we=1),                     # 35269
            instr(LaneOp.SUBI, rx=3, imm=35269, rd=4, we=1),             # 0
            instr(LaneOp.SEL, rx=3, ry=4, imm=-5, rd=5, we=1),           # -5
            instr(LaneOp.REQ, rx=5, rd=5, we=1, m=1, sh=0),              # -5
            instr(LaneOp.REQ, rx=1, m=1, sh=0)]                          # 2500 (NOP wrote nothing)
    exp = check(prog, stall=0.0)
    assert exp.tolist() == [1500, 2500, 2500, 35268, 35269, 0, -5, -5, 2500]


def _count_cycles(dut, words, n_out):
    """Cycles from the first beat offered to the last result taken, no back-pressure."""
    res = {"out": []}

    async def producer(ctx):
        for w in words:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, data.Const(dut.instr_layout, w))
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        cycles = 0
        while len(res["out"]) < n_out:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycles += 1
            if valid:
                res["out"].append(payload)
        res["cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    return res


def test_lane_throughput_and_interlock_latency():
    lay = Lane().instr_layout
    # Independent instructions (different addresses): one per cycle, results after LATENCY.
    prog = [instr(LaneOp.LDI, imm=k, rd=k, we=1) for k in range(32)]
    res = _count_cycles(Lane(), [pack(lay, i) for i in prog], 32)
    assert res["out"] == list(range(32))
    assert res["cycles"] == 32 + Lane.LATENCY
    # A chain where each instruction reads the previous one's result: LATENCY + 1 cycles each.
    prog = [instr(LaneOp.LDI, imm=1, rd=0, we=1)] + \
           [instr(LaneOp.ADDI, rx=0, rd=0, we=1, imm=1) for _ in range(7)]
    res = _count_cycles(Lane(), [pack(lay, i) for i in prog], 8)
    assert res["out"] == list(range(1, 9))
    assert res["cycles"] == 8 * (Lane.LATENCY + 1)


def test_lane_lint():
    lint(emit(Lane(depth=64), "lane"), "lane")
    lint(emit(Lane(depth=2), "lane2"), "lane2")


@pytest.mark.parametrize("simulator", simulators())
def test_lane_cocotb_random(simulator):
    # ≥ 10^4 REQ and ≥ 10^4 ADD among 45 000 random instructions, plus edges and a matmul row.
    lane = Lane(depth=DEPTH)
    rng = np.random.default_rng(9)
    a, b, c0 = rng.integers(-256, 256, 50), rng.integers(-128, 128, (50, 32)), rng.integers(-9999, 9999, 32)
    m, sh = encode_multiplier(rng.uniform(1e-4, 1e-2, 32))
    rand = random_program(10, 45_000)
    ops = [ins["op"] for ins in rand]
    assert ops.count(LaneOp.REQ) >= 10_000 and ops.count(LaneOp.ADD) >= 10_000
    prog = rand + edge_program() + matmul_row_program(a, b, c0, m, sh)
    exp = np.array(LaneModel(DEPTH).run(prog), dtype=np.int64)
    np.testing.assert_array_equal(exp[-32:], requant(matmul(a[None, :], b, c0[None, :]), m, sh, -128, 127)[0])
    words = [pack(lane.instr_layout, ins) for ins in prog]
    mask = (1 << 64) - 1
    run_cocotb(lane, "lane", "tb.test_lane", simulator=simulator,
               vectors={"lo": np.array([w & mask for w in words], dtype=np.uint64),
                        "hi": np.array([w >> 64 for w in words], dtype=np.uint64),
                        "expected": exp})
