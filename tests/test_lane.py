# amaranth: UnusedElaboratable=no
"""hw.lane.Lane against a sequential model built on the golden functions (requant, add, mac,
matmul, relu): every op with random and edge operands (signed m, FMA/FMAI), a matmul row (MAC
then requant), read-after-write interlock, back-pressure; the per-element steps of
docs/numerics.md run through the lane and compared with sim.golden (requant §4, residual add §5,
softmax weights and attention's deferred normalization §9/§14, linear attention §14, LayerNorm
§10); lint; cocotb on every simulator."""
import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.lane import M_SHAPE, SAT_RANGE, Lane, LaneOp, Sat
from sim.golden import (activation, add, attention, divide, elu1_lut, encode_multiplier, exp, exp_weights,
                        layernorm, layernorm_constants, linear_attention, mac, matmul, reduce_max, reduce_sum,
                        relu, requant, rshift_round, rsqrt, softmax_constants)
from sim.golden.attention import DEN_MIN, mantissa15
from sim.golden.fixed import INT8, INT9, INT16, INT32, clip
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
EDGE_VALUES = [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1, 127, 128, -128, -129,
               255, 256, -256, -257, 32767, 32768, -32768, -32769, 65535, 65536, 1 << 30, -(1 << 30)]
M_MIN, M_MAX = -(1 << (M_SHAPE.width - 1)), (1 << (M_SHAPE.width - 1)) - 1
# uint15 multipliers, mantissa15's 2^15, LayerNorm's signed int16 G, the int18 field's ends.
EDGE_M = [0, 1, 2, 16384, 32767, 32768, -1, -2, -32768, -32767, M_MIN, M_MAX]
EDGE_SH = [0, 1, 2, 15, 16, 31, 32, 46, 47]
MAC_OPS = (LaneOp.MAC, LaneOp.MACI, LaneOp.MACM)
PRE_OPS = (LaneOp.FMA, LaneOp.FMAI)   # the addend goes before the rounding shift
DEPTH = 64


def instr(op, *, rx=0, ry=0, rd=0, we=0, emit=1, a=0, b=0, m=1, sh=0, imm=0, sat=Sat.INT32):
    return dict(op=op, rx=rx, ry=ry, rd=rd, we=we, emit=emit, a=a, b=b, m=m, sh=sh, imm=imm, sat=sat)


def packer(layout):
    """Function: instruction dict → payload integer (fields at the layout's offsets)."""
    fields = [(name, f.offset, (1 << f.width) - 1) for name, f in layout]

    def pack(ins):
        word = 0
        for name, offset, mask in fields:
            v = ins[name]
            word |= ((v.value if hasattr(v, "value") else int(v)) & mask) << offset
        return word
    return pack


def _rshift_round(v, sh):
    return (v + (1 << (sh - 1))) >> sh if sh else v


# Plain-int versions of the lane's value d per op (the golden functions check each one below).
_D_OPS = {
    LaneOp.LDI: lambda x, y, imm: imm, LaneOp.SUB: lambda x, y, imm: x - y,
    LaneOp.SUBI: lambda x, y, imm: x - imm, LaneOp.RSUBI: lambda x, y, imm: imm - x,
    LaneOp.MAX: lambda x, y, imm: max(x, y), LaneOp.MAXI: lambda x, y, imm: max(x, imm),
    LaneOp.LT: lambda x, y, imm: int(x < y), LaneOp.LTI: lambda x, y, imm: int(x < imm),
    LaneOp.GTI: lambda x, y, imm: int(x > imm), LaneOp.SEL: lambda x, y, imm: x if y != 0 else imm,
}


class LaneModel:
    """The lane executed one instruction at a time with plain Python integers (fast), every
    step recorded; :meth:`golden` recomputes all results with the sim.golden functions
    (vectorized) and asserts that both agree."""

    def __init__(self, depth):
        self.mem = [0] * depth
        self.acc = 0
        self.trace = []   # (op, x, y, imm, start, a, b, m, sh, sat, result)
        self.out = []     # trace index of each emitted result
        self.counts = {}  # op → executed instructions

    def step(self, ins):
        op = ins["op"]
        if op == LaneOp.NOP:
            return None
        x, y, imm = self.mem[ins["rx"]], self.mem[ins["ry"]], int(ins["imm"])
        m, sh, sat = int(ins["m"]), int(ins["sh"]), ins["sat"]
        start = 0
        if op in MAC_OPS:
            start = {LaneOp.MAC: self.acc, LaneOp.MACI: imm, LaneOp.MACM: x}[op]
            r = self.acc = ((start + int(ins["a"]) * int(ins["b"]) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        elif op in PRE_OPS:
            lo, hi = SAT_RANGE[sat]
            r = min(max(_rshift_round(x * m + (y if op == LaneOp.FMA else imm), sh), lo), hi)
        else:
            lo, hi = SAT_RANGE[sat]
            addend = {LaneOp.ADD: y, LaneOp.ADDI: imm}.get(op, 0)
            d = x if op in (LaneOp.REQ, LaneOp.ADD, LaneOp.ADDI) else _D_OPS[op](x, y, imm)
            r = min(max(addend + _rshift_round(d * m, sh), lo), hi)
        self.counts[op] = self.counts.get(op, 0) + 1
        self.trace.append((op, x, y, imm, start, int(ins["a"]), int(ins["b"]), m, sh, sat, r))
        if ins["we"]:
            self.mem[ins["rd"]] = r
        if ins["emit"]:
            self.out.append(len(self.trace) - 1)
        return r

    def run(self, prog):
        for ins in prog:
            self.step(ins)
        return self.golden()

    def golden(self):
        """Emitted results recomputed by sim.golden, checked against the plain-int model."""
        if not self.trace:
            return np.zeros(0, dtype=np.int64)
        cols = list(zip(*self.trace))
        op = np.array([o.value for o in cols[0]])
        x, y, imm, start, a, b, m, sh = (np.array(c, dtype=np.int64) for c in cols[1:9])
        sat = cols[9]
        relu_after = np.array([s in (Sat.RELU8, Sat.RELU16) for s in sat])
        base = [{Sat.RELU8: Sat.INT8, Sat.RELU16: Sat.INT16}.get(s, s) for s in sat]
        lo = np.array([SAT_RANGE[s][0] for s in base])
        hi = np.array([SAT_RANGE[s][1] for s in base])
        want = np.zeros(len(op), dtype=np.int64)

        def put(sel, fn):
            if sel.any():
                want[sel] = fn(sel)

        def on(*ops):
            return np.isin(op, [o.value for o in ops])

        # requant/add where (m, sh) is in their domain (uint15, ≤ 47); the lane's int18 m beyond
        # it (negative, 2^15…) by the same formula from sim.golden.fixed.
        std = (m >= 0) & (m < 1 << 15) & (sh <= 47)
        put(on(*MAC_OPS), lambda k: mac(start[k], a[k], b[k]))
        put(on(LaneOp.REQ) & std, lambda k: requant(x[k], m[k], sh[k], lo[k], hi[k]))
        put(on(LaneOp.ADD) & std, lambda k: add(y[k], x[k], m[k], sh[k], lo[k], hi[k]))
        put(on(LaneOp.ADDI) & std, lambda k: add(imm[k], x[k], m[k], sh[k], lo[k], hi[k]))
        addend = np.select([op == LaneOp.ADD.value, op == LaneOp.ADDI.value], [y, imm], 0)
        put(on(LaneOp.REQ, LaneOp.ADD, LaneOp.ADDI) & ~std,
            lambda k: clip(addend[k] + rshift_round(x[k] * m[k], sh[k]), lo[k], hi[k]))
        # FMA/FMAI: LayerNorm's y = clip(rshift_round(n·G + B, sh_o), lo, hi) (sim.golden.layernorm)
        pre = np.where(op == LaneOp.FMA.value, y, imm)
        put(on(*PRE_OPS), lambda k: clip(rshift_round(x[k] * m[k] + pre[k], sh[k]), lo[k], hi[k]))
        d = np.select(
            [op == o.value for o in _D_OPS],
            [imm, x - y, x - imm, imm - x, np.maximum(x, y), np.maximum(x, imm), (x < y).astype(np.int64),
             (x < imm).astype(np.int64), (x > imm).astype(np.int64), np.where(y != 0, x, imm)])
        put(on(*_D_OPS), lambda k: clip(rshift_round(d[k] * m[k], sh[k]), lo[k], hi[k]))
        non_mac = ~on(*MAC_OPS)
        want = np.where(relu_after & non_mac, relu(want), want)
        model = np.array(cols[10], dtype=np.int64)
        bad = np.nonzero(want != model)[0]
        assert bad.size == 0, \
            f"model and golden disagree at step {bad[0]}: {self.trace[bad[0]]} vs {want[bad[0]]}"
        return want[self.out]


def run_amaranth(prog, *, depth=DEPTH, stall=0.3, seed=0):
    dut = Lane(depth=depth)
    n_out = sum(1 for ins in prog if ins["emit"] and ins["op"] != LaneOp.NOP)
    pack = packer(dut.instr_layout)
    out = run_stream_test(dut, [pack(ins) for ins in prog],
                          convert_in=lambda w: data.Const(dut.instr_layout, w),
                          n_out=n_out, stall=stall, seed=seed)
    return np.array(out, dtype=np.int64)


def check(prog, *, depth=DEPTH, stall=0.3, seed=0):
    exp = LaneModel(depth).run(prog)
    out = run_amaranth(prog, depth=depth, stall=stall, seed=seed)
    bad = np.nonzero(out != exp)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first output #{bad[0]}: {out[bad[0]]} != {exp[bad[0]]}"
    return exp


# ---- programs -------------------------------------------------------------------------------

def rand_values(rng, n):
    """Operand values: full int32, int16, int8, edge values, small."""
    cat = rng.random(n)
    return np.select(
        [cat < 0.3, cat < 0.5, cat < 0.7, cat < 0.85],
        [rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True), rng.integers(-32768, 32768, n),
         rng.integers(-128, 128, n), rng.choice(EDGE_VALUES, n)],
        rng.integers(-1000, 1001, n)).astype(np.int64)


OP_WEIGHTS = {  # REQ, ADD and FMA(I) carry the most numerics
    LaneOp.REQ: 9, LaneOp.ADD: 9, LaneOp.ADDI: 2, LaneOp.LDI: 2, LaneOp.SUB: 2, LaneOp.SUBI: 1,
    LaneOp.RSUBI: 2, LaneOp.MAX: 1, LaneOp.MAXI: 1, LaneOp.LT: 1, LaneOp.LTI: 1, LaneOp.GTI: 1,
    LaneOp.SEL: 1, LaneOp.MAC: 2, LaneOp.MACI: 1, LaneOp.MACM: 1, LaneOp.NOP: 0.3,
    LaneOp.FMA: 5, LaneOp.FMAI: 5,
}
_PLAIN_OK = (LaneOp.MAX, LaneOp.MAXI, LaneOp.LT, LaneOp.LTI, LaneOp.GTI, LaneOp.SEL, LaneOp.SUB)


def random_program(seed, n, *, depth=DEPTH, addr_span=None):
    """Fill the storage, then ``n`` random instructions: random addresses (so some read what
    an instruction in flight writes), random write/emit flags and saturation, operands and
    scales that are edge values, uniform, or chosen to land near an int8/int16 result."""
    rng = np.random.default_rng(seed)
    span = addr_span or depth
    model = LaneModel(depth)
    prog = []

    def push(ins):
        prog.append(ins)
        model.step(ins)

    fill = rand_values(rng, depth)
    for k in range(depth):
        push(instr(LaneOp.LDI, imm=int(fill[k]), rd=k, we=1, emit=int(k % 8 == 0)))
    ops = list(OP_WEIGHTS)
    p = np.array(list(OP_WEIGHTS.values()), dtype=np.float64)
    opi = rng.choice(len(ops), n, p=p / p.sum())
    rx, ry, rd = (rng.integers(0, span, n) for _ in range(3))
    we, emit = rng.random(n) < 0.35, rng.random(n) < 0.9
    a, b = rng.integers(-256, 256, n), rng.integers(-128, 128, n)
    imm, imm_edge = rand_values(rng, n), rng.choice(EDGE_VALUES, n)
    use_edge_imm, plain, sel_zero = rng.random(n) < 0.5, rng.random(n) < 0.5, rng.random(n) < 0.5
    m_cat = rng.random(n)
    m = np.select([m_cat < 0.3, m_cat < 0.45], [rng.choice(EDGE_M, n), rng.integers(-(1 << 15), 1 << 15, n)],
                  rng.integers(0, 1 << 15, n))
    sh_cat, sh_edge, sh_uni = rng.random(n), rng.choice(EDGE_SH, n), rng.integers(0, 48, n)
    sh_target = rng.choice([7, 8, 15, 16], n) - rng.integers(-2, 3, n)
    sat = rng.integers(0, 8, n)
    for k in range(n):
        op = ops[opi[k]]
        x = model.mem[rx[k]]
        v = int(imm_edge[k]) if op in (LaneOp.RSUBI, LaneOp.SUBI) and use_edge_imm[k] else int(imm[k])
        y_addr = int(ry[k])
        if op == LaneOp.SEL and sel_zero[k] and model.mem[rx[k]] == 0:
            y_addr = int(rx[k])   # exercise the zero-mask side
        mk = int(m[k])
        if sh_cat[k] < 0.3:
            shk = int(sh_edge[k])
        elif sh_cat[k] < 0.6:
            shk = int(sh_uni[k])
        else:
            shk = min(max((abs(v if op == LaneOp.LDI else x) * mk).bit_length() - int(sh_target[k]), 0), 47)
        if op in PRE_OPS and rng.random() < 0.5:
            mk = int(rng.integers(-(1 << 15), 1 << 15))   # LayerNorm's G: signed int16
        if op in _PLAIN_OK and plain[k]:
            mk, shk = 1, 0
        push(instr(op, rx=int(rx[k]), ry=y_addr, rd=int(rd[k]), we=int(we[k]), emit=int(emit[k]),
                   a=int(a[k]), b=int(b[k]), m=mk, sh=shk, imm=v, sat=Sat(int(sat[k]))))
    return prog


def edge_program(full=True):
    """Every non-MAC op over edge operands × edge scales × every saturation range.

    ``full=False`` (≈ 3 500 instructions, for the Amaranth simulator) keeps every operand and
    saturation range but fewer (m, sh) combinations; the cocotb runs take the full set (≈ 14 000).
    """
    prog = [instr(LaneOp.LDI, imm=v, rd=k, we=1, emit=0) for k, v in enumerate(EDGE_VALUES)]
    n = len(EDGE_VALUES)
    if full:
        scales = [(m, sh) for m in EDGE_M[:5] for sh in (0, 1, 15, 31, 47)]   # requant/add's uint15 m
        signed_scales = [(m, sh) for m in EDGE_M[5:] for sh in (0, 15, 47)]   # the rest of int18
        diff_sats = (Sat.INT8, Sat.INT16, Sat.INT32, Sat.UINT16)
        fma_scales = [(m, sh) for m in EDGE_M for sh in (0, 16, 47)]
    else:
        scales = [(1, 0), (0, 31), (32767, 47), (32767, 15), (2, 1)]
        signed_scales = [(-32768, 16), (M_MIN, 1), (32768, 47), (-1, 0)]
        diff_sats = (Sat.INT32, Sat.UINT16)
        fma_scales = [(-32768, 0), (32767, 47), (-1, 16), (M_MAX, 31), (M_MIN, 47), (0, 1)]
    for sat in Sat:
        for m, sh in scales:
            for k in range(n):
                prog.append(instr(LaneOp.REQ, rx=k, m=m, sh=sh, sat=sat))
                prog.append(instr(LaneOp.ADD, rx=k, ry=(k * 7 + 3) % n, m=m, sh=sh, sat=sat))
    for sat in (Sat.INT16, Sat.INT32, Sat.UINT8):
        for m, sh in signed_scales:
            for k in range(n):
                prog.append(instr(LaneOp.REQ, rx=k, m=m, sh=sh, sat=sat))
                prog.append(instr(LaneOp.ADD, rx=k, ry=(k * 7 + 3) % n, m=m, sh=sh, sat=sat))
    for sat in diff_sats:
        for k in range(n):
            for j in (0, 2, 5, 9, n - 1):
                prog.append(instr(LaneOp.SUB, rx=k, ry=j, sat=sat))
                prog.append(instr(LaneOp.RSUBI, rx=k, imm=EDGE_VALUES[j], m=32767, sh=16, sat=sat))
    for op in (LaneOp.ADDI, LaneOp.SUBI, LaneOp.MAXI, LaneOp.LTI, LaneOp.GTI, LaneOp.MAX, LaneOp.LT,
               LaneOp.SEL, LaneOp.LDI):
        for k in range(n):
            for j in (0, 4, 6):
                prog.append(instr(op, rx=k, ry=j, imm=EDGE_VALUES[(k + j) % n], sat=Sat.INT32))
    prog.append(instr(LaneOp.SEL, rx=1, ry=4, imm=99))  # mem[4] == 0: selects imm
    # FMA/FMAI: d·m + A before the shift, signed m at its ends, A at the int32 ends.
    for sat in (Sat.INT9, Sat.INT32):
        for mv, sh in fma_scales:
            for k in range(0, n, 3):
                prog.append(instr(LaneOp.FMA, rx=k, ry=(k * 5 + 1) % n, m=mv, sh=sh, sat=sat))
                prog.append(instr(LaneOp.FMAI, rx=k, imm=EDGE_VALUES[(k * 3 + 2) % n], m=mv, sh=sh, sat=sat))
    # The largest |d·m|: d = ±(2^32 − 1) by SUB/RSUBI times the int18 ends.
    for mv in (M_MIN, M_MAX, -32768, 32768):
        for sh in (0, 17, 47, 62):
            prog.append(instr(LaneOp.SUB, rx=2, ry=0, m=mv, sh=sh, sat=Sat.INT32))   # 2^31 − 1 − (−2^31)
            prog.append(instr(LaneOp.SUB, rx=0, ry=2, m=mv, sh=sh, sat=Sat.INT32))
            prog.append(instr(LaneOp.RSUBI, rx=0, imm=INT32_MAX, m=mv, sh=sh, sat=Sat.INT16))
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


def test_lane_model_agrees_with_golden():
    # The plain-int model and the golden functions agree step by step (asserted in golden()),
    # including ReLU as relu(requant(...)) and RSUBI differences beyond int32.
    model = LaneModel(DEPTH)
    for ins in random_program(5, 5000) + edge_program():
        model.step(ins)
    assert len(model.golden()) > 10_000
    model = LaneModel(4)
    model.mem[0] = 1000
    assert model.step(instr(LaneOp.REQ, m=3, sh=1, sat=Sat.RELU8)) == 127
    model.mem[0] = -1000
    assert model.step(instr(LaneOp.REQ, m=3, sh=1, sat=Sat.RELU8)) == 0
    model.golden()


def test_lane_random_ops_backpressure():
    check(random_program(1, 2500), stall=0.3, seed=1)


def test_lane_random_ops_hot_addresses():
    # Four addresses only: most instructions depend on one in flight (interlock).
    check(random_program(2, 800, addr_span=4), stall=0.2, seed=2)


def test_lane_edge_cases():
    exp = check(edge_program(full=False), stall=0.1, seed=3)
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
            prog.append(instr(LaneOp.MACM if k == 0 else LaneOp.MAC, rx=j, rd=j, a=int(a2[k]),
                              b=int(b2[k, j]), we=int(k == 4), emit=int(k == 4)))
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


# ---- the per-element steps of docs/numerics.md, through the lane ---------------------------

def _load(values, base=0):
    """LDI each value into consecutive addresses from ``base`` (no output)."""
    return [instr(LaneOp.LDI, imm=int(v), rd=base + j, we=1, emit=0) for j, v in enumerate(values)]


def _q8(x, s, lo=-128, hi=127):
    return np.clip(np.floor(np.asarray(x) / s + 0.5), lo, hi).astype(np.int64)


def test_lane_requant_and_residual_add():
    # §4 and §5 as an encoder layer runs them: o = requant(acc) to int16 (and int9/int8 for q and
    # FFN outputs), then h = add(o, x, m, sh) with the layer input x (int9); per-column m, sh.
    rng = np.random.default_rng(11)
    n = 32
    acc = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    acc[:8] = [INT32_MIN, INT32_MAX, 0, -1, 1, 65535, -65536, 12345]
    m_o, sh_o = encode_multiplier(rng.uniform(1e-6, 2e-3, n))
    m_o[:4], sh_o[:4] = [32767, 0, 1, 32767], [47, 0, 0, 0]
    x = rng.integers(-256, 256, n)
    x[:4] = [-256, 255, 0, -1]
    m_x, sh_x = encode_multiplier(rng.uniform(0.01, 300, n))
    m_x[:3], sh_x[:3] = [32767, 32767, 1], [0, 47, 0]
    prog = _load(acc) + _load(x, n)
    prog += [instr(LaneOp.REQ, rx=j, rd=j, we=1, m=int(m_o[j]), sh=int(sh_o[j]), sat=Sat.INT16) for j in range(n)]
    prog += [instr(LaneOp.ADD, rx=n + j, ry=j, m=int(m_x[j]), sh=int(sh_x[j]), sat=Sat.INT16) for j in range(n)]
    prog += [instr(LaneOp.REQ, rx=2 * n - 1 - j, m=int(m_x[j]), sh=int(sh_x[j]), sat=sat)
             for sat in (Sat.INT9, Sat.INT8) for j in range(n)]
    out = run_amaranth(prog, stall=0.2, seed=11)
    o = requant(acc, m_o, sh_o, *INT16)
    h = add(o, x, m_x, sh_x, *INT16)
    xr = x[::-1]
    want = np.r_[o, h, requant(xr, m_x, sh_x, *INT9), requant(xr, m_x, sh_x, *INT8)]
    np.testing.assert_array_equal(out, want)
    assert {32767, -32768} <= set(o.tolist()) and {32767, -32768} <= set(h.tolist())  # saturation
    assert np.any(np.abs(h) < 30000)                                                     # and in range


def _softmax_weights_through_lane(s, c_e, sh_e, seed):
    """Rows of scores → (u, w) by the lane: u = RSUBI(S, imm = row max), e = exp(u) (the Exp
    unit's golden), w = REQ(e, m = 1, sh = 7, sat = UINT8) = min(255, rshift_round(e, 7))."""
    rows, n = s.shape
    mx = reduce_max(s)
    prog = []
    for i in range(rows):
        prog += _load(s[i])
        prog += [instr(LaneOp.RSUBI, rx=j, imm=int(mx[i]), m=int(c_e), sh=int(sh_e), sat=Sat.UINT16)
                 for j in range(n)]
    u = run_amaranth(prog, stall=0.2, seed=seed).reshape(rows, n)
    e = exp(u)
    prog = []
    for i in range(rows):
        prog += _load(e[i])
        prog += [instr(LaneOp.REQ, rx=j, m=1, sh=7, sat=Sat.UINT8) for j in range(n)]
    w = run_amaranth(prog, stall=0.2, seed=seed + 1).reshape(rows, n)
    return mx, u, w


def test_lane_softmax_weights():
    # §9: u_j = min(65535, rshift_round((M − S_j)·c_e, sh_e)) and w_j = min(255, rshift_round(e_j, 7)),
    # for random rows, an all-equal row, a one-hot row, and M − S_j up to 2^32 − 1.
    rng = np.random.default_rng(12)
    n = 16
    s = rng.integers(-(1 << 20), 1 << 20, (5, n))
    s[1] = 777                                      # all equal: every w = 255
    s[2] = -5
    s[2, 3] = 1 << 24                               # one-hot
    s[3] = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    s[3, :2] = [INT32_MIN, INT32_MAX]               # M − S = 2^32 − 1
    for scale in (1e-3, 0.5, 2.0 ** -30):
        c_e, sh_e = softmax_constants(scale)
        mx, u, w = _softmax_weights_through_lane(s, c_e, sh_e, seed=12)
        np.testing.assert_array_equal(u, np.minimum(65535, rshift_round((mx[:, None] - s) * c_e, sh_e)))
        np.testing.assert_array_equal(w, exp_weights(s, c_e, sh_e))
        assert np.all(w.max(axis=1) == 255) and np.all(w[1] == 255)


def test_lane_attention_deferred_normalization():
    # §9/§14: w by the lane (above), the P·V sums Σ_j w_j v_jc by MACI/MAC (w uint8 as the int9 A
    # operand), t_c = REQ(Σ, m_r, sh_r) with (m_r, sh_r) = mantissa15(divide(2^32, Σw), 24), then
    # the per-column requant a_c = REQ(t_c, m_a, sh_a) to int9 — equal to sim.golden.attention.
    rng = np.random.default_rng(13)
    n_tok, d = 9, 6
    q = _q8(rng.normal(0, 1, (n_tok, d)), 3 / 127)
    k = _q8(rng.normal(0, 1, (n_tok, d)), 3 / 127)
    v = _q8(rng.normal(0, 1, (n_tok, d)), 3 / 127)
    q[0, :] = -128                                   # a row with extreme scores
    v[:, 0] = -128
    v[:, 1] = 127
    c_e, sh_e = softmax_constants((3 / 127) ** 2 / np.sqrt(d))
    m_a, sh_a = encode_multiplier(rng.uniform(0.5, 3.0, d) / 256)
    s = matmul(q, k.T)
    _, _, w = _softmax_weights_through_lane(s, c_e, sh_e, seed=13)
    np.testing.assert_array_equal(w, exp_weights(s, c_e, sh_e))
    m_r, sh_r = mantissa15(divide(np.full(n_tok, 1 << 32), reduce_sum(w)), 24)
    prog = []
    for i in range(n_tok):
        for c in range(d):
            prog += [instr(LaneOp.MACI if j == 0 else LaneOp.MAC, a=int(w[i, j]), b=int(v[j, c]), rd=c,
                           we=int(j == n_tok - 1), emit=0) for j in range(n_tok)]
        prog += [instr(LaneOp.REQ, rx=c, rd=c, we=1, m=int(m_r[i]), sh=int(sh_r[i]), sat=Sat.INT32)
                 for c in range(d)]
        prog += [instr(LaneOp.REQ, rx=c, m=int(m_a[c]), sh=int(sh_a[c]), sat=Sat.INT9) for c in range(d)]
    out = run_amaranth(prog, stall=0.2, seed=14).reshape(n_tok, 2, d)
    t = rshift_round(matmul(w, v) * m_r[:, None], sh_r[:, None])
    np.testing.assert_array_equal(out[:, 0], t)
    np.testing.assert_array_equal(out[:, 1], attention(q, k, v, c_e, sh_e, m_a, sh_a))
    assert np.any(out[:, 1] == 255) or np.any(out[:, 1] == -256) or np.abs(out[:, 1]).max() > 50


def test_lane_mantissa15_corner():
    # r = 65535 (a row sum of 65537) rounds up to 2^15, which mantissa15 returns as the equal
    # (2^14, one less shift) so m stays uint15; the REQ on the lane equals the golden value.
    for r, sh0 in ((int(divide(1 << 32, 65537)), 24), (int(divide(1 << 32, 65537)), 16)):
        m_r, sh_r = (int(x) for x in mantissa15(r, sh0))
        assert (m_r, sh_r) == (1 << 14, sh0 - 2)
        acc = np.array([INT32_MIN, INT32_MAX, 0, 1, -1, 123456789, -987654321, 1 << 15, -(1 << 15) - 1])
        prog = _load(acc) + [instr(LaneOp.REQ, rx=j, m=m_r, sh=sh_r, sat=Sat.INT32) for j in range(len(acc))]
        np.testing.assert_array_equal(run_amaranth(prog, stall=0.1, seed=15), rshift_round(acc * m_r, sh_r))


def test_lane_linear_attention_normalization():
    # §14 linear attention, the per-row steps after U = φq·T8: r = divide(2^32, max(den, 2^16)),
    # (m_r, sh_r) = mantissa15(r, 16), t = REQ(num, m_r, sh_r) (m = 0 where den ≤ 0 gives the
    # golden 0), a = REQ(t, m_o, sh_o) to int9 — first on chosen num/den (den = 65537 gives
    # m_r = 2^15, den below the clamp, den ≤ 0), then end to end against linear_attention.
    def lane_rows(num, den, m_o, sh_o, seed):
        r = divide(np.full(den.shape, 1 << 32), np.clip(den, DEN_MIN, INT32[1]))
        m_r, sh_r = mantissa15(r, 16)
        m_r = np.where(den > 0, m_r, 0)
        rows, d = num.shape
        prog = []
        for i in range(rows):
            prog += _load(num[i])
            prog += [instr(LaneOp.REQ, rx=c, rd=c, we=1, m=int(m_r[i]), sh=int(sh_r[i]), sat=Sat.INT32)
                     for c in range(d)]
            prog += [instr(LaneOp.REQ, rx=c, m=int(m_o[c]), sh=int(sh_o[c]), sat=Sat.INT9) for c in range(d)]
        return run_amaranth(prog, stall=0.2, seed=seed).reshape(rows, 2, d)

    rng = np.random.default_rng(16)
    d = 5
    den = np.array([65537, 1 << 16, 70000, 1 << 20, INT32_MAX, 1000, 1, 0, -7, 3 << 17])
    num = rng.integers(-(1 << 24), 1 << 24, (len(den), d))
    num[:, 0] = [INT32_MAX, INT32_MIN, 0, -1, 1 << 30, -(1 << 30), 5, 5, 5, 65537]
    m_o, sh_o = encode_multiplier(rng.uniform(1e-6, 1e-3, d))
    out = lane_rows(num, den, m_o, sh_o, seed=16)
    r = divide(np.full(den.shape, 1 << 32), np.clip(den, DEN_MIN, INT32[1]))
    m_r, sh_r = mantissa15(r, 16)
    # the lane's REQ to INT32 saturates where 2^16·num/den leaves int32 (the PE's RSCALE
    # stage wraps instead; the compiler keeps |t| < 2^31)
    t = np.where(den[:, None] > 0, clip(rshift_round(num * m_r[:, None], sh_r[:, None]), *INT32), 0)
    np.testing.assert_array_equal(out[:, 0], t)
    np.testing.assert_array_equal(out[:, 1], clip(rshift_round(t * m_o, sh_o), *INT9))

    # End to end: the golden pipeline up to U, then the lane, against linear_attention.
    n_tok, d = 10, 6
    qf, kf, vf = (rng.normal(0, 1, (n_tok, d)) for _ in range(3))
    s_in = 3 / 127
    lut = elu1_lut(s_in, (127 * s_in + 1) / 255)
    q, k, v = _q8(qf, s_in), _q8(kf, s_in), _q8(vf, s_in)
    m_t, sh_t = encode_multiplier(np.r_[np.full(d, 0.02), 0.005])
    m_o, sh_o = encode_multiplier(np.full(d, 40.0 / 2 ** 16))
    phq, phk = activation(q, lut), activation(k, lut)
    t8 = requant(matmul(phk.T, np.c_[v, np.ones(n_tok, int)]), m_t, sh_t, *INT8)
    u = matmul(phq, t8)
    out = lane_rows(u[:, :d], u[:, d], m_o, sh_o, seed=17)
    want = linear_attention(q, k, v, lut, lut, m_t, sh_t, m_o, sh_o)
    np.testing.assert_array_equal(out[:, 1], want)
    assert len(np.unique(want)) > 10


def _layernorm_through_lane(h, r_d, E, G, B, sh_o, sat, *, b_stored, seed):
    """LayerNorm rows by the lane: c = SUBI(h, μ); n = REQ(c, R, 7 + p) to int16; y = FMAI(n, G, B,
    sh_o) (or FMA with B stored at address D + i). μ and (R, p) are the row scalars the Reduce and
    Rsqrt units deliver, computed here with the golden functions from the lane's own c."""
    rows, dim = h.shape
    mu = rshift_round(reduce_sum(h) * int(r_d), 24)
    prog = []
    for i in range(rows):
        prog += _load(h[i])
        prog += [instr(LaneOp.SUBI, rx=j, imm=int(mu[i]), sat=Sat.INT32) for j in range(dim)]
    c = run_amaranth(prog, stall=0.2, seed=seed).reshape(rows, dim)
    R, p = rsqrt(reduce_sum(c * c) + int(E))
    prog = _load(B, dim) if b_stored else []
    for i in range(rows):
        prog += _load(c[i])
        prog += [instr(LaneOp.REQ, rx=j, rd=j, we=1, m=int(R[i]), sh=7 + int(p[i]), sat=Sat.INT16)
                 for j in range(dim)]
        if b_stored:
            prog += [instr(LaneOp.FMA, rx=j, ry=dim + j, m=int(G[j]), sh=int(sh_o), sat=sat) for j in range(dim)]
        else:
            prog += [instr(LaneOp.FMAI, rx=j, imm=int(B[j]), m=int(G[j]), sh=int(sh_o), sat=sat)
                     for j in range(dim)]
    ny = run_amaranth(prog, stall=0.2, seed=seed + 1).reshape(rows, 2, dim)
    return mu, c, ny[:, 0], ny[:, 1]


def test_lane_layernorm_steps():
    # §10 with constants from layernorm_constants, then with hand-made extremes: G negative and
    # −32768, B at the int32 ends, sh_o = 0 and 47; rows at the int16 ends, all-equal rows (v = E,
    # or v = 0 → rsqrt(1)); B as imm (FMAI) and stored (FMA); int9 and int16 outputs.
    rng = np.random.default_rng(18)
    dim = 12
    h = rng.integers(-3000, 3000, (6, dim))
    h[1] = 1234                                             # all equal
    h[2] = np.where(np.arange(dim) % 2, 32767, -32768)      # int16 ends
    h[3] = rng.integers(-32768, 32768, dim)
    h[4, :] = 0
    h[4, 5] = -32768                                        # one outlier
    gamma, beta = rng.uniform(-2, 2, dim), rng.uniform(-1, 1, dim)
    cases = [(layernorm_constants(gamma, beta, 1e-2, 0.03, 1e-5), Sat.INT9, False),
             (layernorm_constants(gamma, beta, 1e-2, 0.03, 0.0), Sat.INT9, True)]
    G = rng.integers(-32768, 32768, dim)
    G[:4] = [-32768, 32767, -1, 0]
    B = rng.integers(INT32_MIN, INT32_MAX, dim, endpoint=True)
    B[:4] = [INT32_MAX, INT32_MIN, 0, -1]
    for sh_o in (0, 47, 20, 30):
        cases.append((dict(r_d=int(round(2 ** 24 / dim)), E=int(rng.integers(0, 1000)), G=G, B=B, sh_o=sh_o),
                      Sat.INT16 if sh_o == 30 else Sat.INT9, sh_o % 2 == 1))
    seen = set()
    for n_case, (kc, sat, b_stored) in enumerate(cases):
        lo, hi = SAT_RANGE[sat]
        mu, c, n, y = _layernorm_through_lane(h, kc["r_d"], kc["E"], kc["G"], kc["B"], kc["sh_o"], sat,
                                              b_stored=b_stored, seed=20 + 2 * n_case)
        np.testing.assert_array_equal(c, h - mu[:, None])
        R, p = rsqrt(reduce_sum(c * c) + int(kc["E"]))
        np.testing.assert_array_equal(n, clip(rshift_round(c * R[:, None], 7 + p[:, None]), *INT16))
        np.testing.assert_array_equal(y, layernorm(h, kc["r_d"], kc["E"], kc["G"], kc["B"], kc["sh_o"], lo, hi))
        seen |= set(np.unique(y).tolist())
    assert {-256, 255, 0} <= seen and len(seen) > 50


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
    dut = Lane()
    pack = packer(dut.instr_layout)
    # Independent instructions (different addresses): one per cycle, results after LATENCY.
    prog = [instr(LaneOp.LDI, imm=k, rd=k, we=1) for k in range(32)]
    res = _count_cycles(dut, [pack(i) for i in prog], 32)
    assert res["out"] == list(range(32))
    assert res["cycles"] == 32 + Lane.LATENCY
    # A chain where each instruction reads the previous one's result: accepted LATENCY cycles
    # after it (the result is written as it enters the output register).
    prog = [instr(LaneOp.LDI, imm=1, rd=0, we=1)] + \
           [instr(LaneOp.ADDI, rx=0, rd=0, we=1, imm=1) for _ in range(7)]
    res = _count_cycles(Lane(), [pack(i) for i in prog], 8)
    assert res["out"] == list(range(1, 9))
    assert res["cycles"] == 7 * Lane.LATENCY + (Lane.LATENCY + 1)


def test_lane_lint():
    lint(emit(Lane(depth=64), "lane"), "lane")
    lint(emit(Lane(depth=2), "lane2"), "lane2")


@pytest.mark.parametrize("simulator", simulators())
def test_lane_cocotb_random(simulator):
    # Verilator: ≥ 10^4 each of REQ, ADD and FMA/FMAI among 58 000 random instructions, plus
    # every edge case and a matmul row; Icarus (≈ 4× slower per cycle): 3 000 random
    # instructions, the reduced edge set and the matmul row.
    lane = Lane(depth=DEPTH)
    rng = np.random.default_rng(9)
    a, b, c0 = rng.integers(-256, 256, 50), rng.integers(-128, 128, (50, 32)), rng.integers(-9999, 9999, 32)
    m, sh = encode_multiplier(rng.uniform(1e-4, 1e-2, 32))
    full = simulator == "verilator"
    rand = random_program(10, 58_000 if full else 3_000)
    ops = [ins["op"] for ins in rand]
    if full:
        n_fma = ops.count(LaneOp.FMA) + ops.count(LaneOp.FMAI)
        assert min(ops.count(LaneOp.REQ), ops.count(LaneOp.ADD), n_fma) >= 10_000
    prog = rand + edge_program(full) + matmul_row_program(a, b, c0, m, sh)
    exp = LaneModel(DEPTH).run(prog)
    np.testing.assert_array_equal(exp[-32:], requant(matmul(a[None, :], b, c0[None, :]), m, sh, -128, 127)[0])
    pack = packer(lane.instr_layout)
    words = [pack(ins) for ins in prog]
    mask = (1 << 64) - 1
    run_cocotb(lane, "lane", "tb.test_lane", simulator=simulator,
               vectors={"lo": np.array([w & mask for w in words], dtype=np.uint64),
                        "hi": np.array([w >> 64 for w in words], dtype=np.uint64),
                        "expected": exp})
