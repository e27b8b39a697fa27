# amaranth: UnusedElaboratable=no
"""hw.reduce.Reduce against sim.golden.reduce_sum/reduce_max: rows of 1…300 values split into
beats, random masks, extremes, all-equal rows, cross-PE composition, back-pressure."""
import numpy as np
import pytest
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.reduce import Reduce, ReduceOp
from sim.golden import reduce_max, reduce_sum
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import measure_latency, run_full_rate, run_stream_test

GOLDEN = {ReduceOp.SUM: reduce_sum, ReduceOp.MAX: reduce_max}


def _values(rng, n, width, kind):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if kind == "random":
        return rng.integers(lo, hi, n, endpoint=True)
    if kind == "equal":
        return np.full(n, rng.integers(lo, hi, endpoint=True))
    if kind == "min":
        return np.full(n, lo)
    if kind == "max":
        return np.full(n, hi)
    if kind == "extremes":
        return rng.choice([lo, hi], n)
    raise ValueError(kind)


def rows_to_beats(rows, lanes, rng=None):
    """Split each ``(op, values)`` row into beats of ``lanes``; return (beats, expected).

    With ``rng`` each beat takes a random nonempty subset of the lanes (holes in the mask),
    otherwise values fill lanes contiguously and only a row's last beat is partial.
    """
    beats, expected = [], []
    for op, vals in rows:
        vals = np.asarray(vals, dtype=np.int64)
        k, n = 0, len(vals)
        while k < n:
            if rng is None:
                lanes_used = list(range(min(lanes, n - k)))
            else:
                count = int(rng.integers(1, min(lanes, n - k), endpoint=True))
                lanes_used = sorted(rng.choice(lanes, count, replace=False).tolist())
            dat = rng.integers(-5, 5, lanes).tolist() if rng is not None else [0] * lanes
            mask = 0
            for lane in lanes_used:
                dat[lane] = int(vals[k])
                mask |= 1 << lane
                k += 1
            beats.append({"data": dat, "mask": mask, "op": op, "last": int(k == n)})
        expected.append((int(GOLDEN[op](vals)), op))
    return beats, expected


def run_reduce(dut, beats, *, seed=0, stall=0.3):
    return run_stream_test(dut, beats, n_out=sum(b["last"] for b in beats), seed=seed, stall=stall,
                           convert_out=lambda p: (int(p.value), ReduceOp(p.op)))


def row_set(width, seed):
    """Every row length 1…300 with a random op, plus extreme and all-equal rows."""
    rng = np.random.default_rng(seed)
    ops = [ReduceOp.SUM, ReduceOp.MAX]
    rows = [(ops[int(rng.integers(2))], _values(rng, n, width, "random")) for n in range(1, 301)]
    for kind in ("min", "max", "extremes", "equal"):
        for n in (1, 15, 16, 17, 299, 300):
            rows += [(op, _values(rng, n, width, kind)) for op in ops]
    return rows


def test_reduce_rows_1_to_300():
    # 32-bit inputs, rows up to 300 values: the 41-bit sum cannot overflow even at ±2^31.
    dut = Reduce(lanes=16, width=32, max_row=300)
    assert (dut.out_width, dut.tree_width, dut.latency) == (41, 36, 5)
    beats, expected = rows_to_beats(row_set(32, seed=1), 16)
    assert run_reduce(dut, beats, seed=2) == expected


@pytest.mark.parametrize("lanes", [1, 2, 3, 5, 8])
def test_reduce_random_masks(lanes):
    # Any lane count (odd values pass a tree level unchanged) and holes in the masks.
    rng = np.random.default_rng(lanes)
    rows = []
    for _ in range(150):
        n = int(rng.integers(1, 40))
        kind = str(rng.choice(["random", "extremes", "equal"]))
        rows.append((ReduceOp(int(rng.integers(2))), _values(rng, n, 8, kind)))
    beats, expected = rows_to_beats(rows, lanes, rng=rng)
    assert run_reduce(Reduce(lanes=lanes, width=8, max_row=40), beats, seed=lanes) == expected


def test_reduce_empty_beat_is_identity():
    # Documented: an empty-mask beat is not valid, but inside a row it acts as the identity;
    # a row of only empty beats yields 0 (sum) or the most negative value (max).
    dut = Reduce(lanes=4, width=8, max_row=8)
    beat = lambda d, mask, op, last: {"data": d, "mask": mask, "op": op, "last": last}
    beats = [
        beat([1, 2, 3, 4], 0, ReduceOp.SUM, 0), beat([-7, 9, 9, 9], 1, ReduceOp.SUM, 1),
        beat([5, 5, 5, 5], 0, ReduceOp.MAX, 0), beat([-7, -100, 9, 9], 3, ReduceOp.MAX, 0),
        beat([1, 2, 3, 4], 0, ReduceOp.MAX, 1),
        beat([1, 2, 3, 4], 0, ReduceOp.SUM, 1), beat([1, 2, 3, 4], 0, ReduceOp.MAX, 1),
    ]
    assert run_reduce(dut, beats) == [(-7, ReduceOp.SUM), (-7, ReduceOp.MAX), (0, ReduceOp.SUM),
                                      (-128, ReduceOp.MAX)]


def test_reduce_latency():
    dut = Reduce(lanes=5, width=8)
    latency, out = measure_latency(dut, {"data": [1, 2, 3, 4, 5], "mask": 31, "op": ReduceOp.SUM, "last": 1})
    assert (latency, out.value) == (dut.latency, 15) and dut.latency == 4


class TwoLevel(wiring.Component):
    """Test fixture: P lockstep PEs each reduce their L lanes of a P·L-lane beat; a second
    ``Reduce`` with ``lanes = P`` combines the PEs' row partials (the documented composition)."""

    def __init__(self, pes, lanes, width, max_row):
        self.pe = [Reduce(lanes=lanes, width=width, max_row=max_row) for _ in range(pes)]
        self.top = Reduce(lanes=pes, width=self.pe[0].out_width, max_row=pes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(width), pes * lanes),
                "mask": unsigned(pes * lanes), "op": ReduceOp, "last": unsigned(1)}))),
            "o": Out(stream.Signature(self.top.o.payload.shape())),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.pe[0].lanes
        m.submodules.top = self.top
        for k, pe in enumerate(self.pe):
            m.submodules[f"pe{k}"] = pe
            m.d.comb += [
                pe.i.valid.eq(self.i.valid),
                pe.i.payload.op.eq(self.i.payload.op), pe.i.payload.last.eq(self.i.payload.last),
                pe.i.payload.mask.eq(self.i.payload.mask[k * L:(k + 1) * L]),
                pe.o.ready.eq(self.top.i.ready),
                self.top.i.payload.data[k].eq(pe.o.payload.value),
            ]
            for j in range(L):
                m.d.comb += pe.i.payload.data[j].eq(self.i.payload.data[k * L + j])
        # Lockstep PEs see identical control, so their readies and valids are equal; a PE whose
        # lanes were all masked returns the identity, so every PE may join the second level.
        m.d.comb += [
            self.i.ready.eq(self.pe[0].i.ready),
            self.top.i.valid.eq(self.pe[0].o.valid),
            self.top.i.payload.mask.eq(-1),
            self.top.i.payload.op.eq(self.pe[0].o.payload.op),
            self.top.i.payload.last.eq(1),
        ]
        wiring.connect(m, wiring.flipped(self.o), self.top.o)
        return m


def test_reduce_composes_across_pes():
    rng = np.random.default_rng(7)
    rows = [(ReduceOp(int(rng.integers(2))), _values(rng, n, 16, "random")) for n in range(1, 121)]
    rows += [(op, _values(rng, 100, 16, kind)) for op in ReduceOp for kind in ("min", "max", "equal")]
    beats, expected = rows_to_beats(rows, 16)
    dut = TwoLevel(4, 4, 16, 100)
    assert run_reduce(dut, beats, seed=5) == expected


def test_reduce_bad_params():
    with pytest.raises(TypeError, match="lanes must be an integer"):
        Reduce(lanes=2.0)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        Reduce(lanes=0)
    with pytest.raises(ValueError, match="width must be at most 64"):
        Reduce(width=65)
    with pytest.raises(ValueError, match="max_row must be at least 1"):
        Reduce(max_row=0)
    with pytest.raises(TypeError, match="max_row must be an integer"):
        Reduce(max_row=True)
    with pytest.raises(TypeError):
        Reduce(16, 32)
    with pytest.raises(AttributeError):
        Reduce().lanes = 4


@pytest.mark.parametrize("lanes,width,max_row", [(16, 32, 300), (3, 8, 3), (1, 17, 1024)])
def test_reduce_lint(lanes, width, max_row):
    name = f"reduce_{lanes}x{width}"
    lint(emit(Reduce(lanes=lanes, width=width, max_row=max_row), name), name)


@pytest.mark.parametrize("simulator", simulators())
def test_reduce_cocotb(simulator):
    # ≥ 10^4 beats: all row lengths 1…300 for both ops plus single-beat rows with random masks.
    rng = np.random.default_rng(11)
    rows = []
    for op in ReduceOp:
        rows += [(op, _values(rng, n, 32, "random")) for n in range(1, 301)]
    rows += row_set(32, seed=12)
    beats, expected = rows_to_beats(rows, 16)
    single = [(ReduceOp(int(rng.integers(2))), _values(rng, int(rng.integers(1, 17)), 32, "random"))
              for _ in range(5000)]
    b2, e2 = rows_to_beats(single, 16, rng=rng)
    beats, expected = beats + b2, expected + e2
    assert len(beats) >= 10_000
    dut = Reduce(lanes=16, width=32, max_row=300)
    vectors = {
        "data": np.array([b["data"] for b in beats], dtype=np.int64),
        "mask": np.array([b["mask"] for b in beats]),
        "op": np.array([b["op"].value for b in beats]),
        "last": np.array([b["last"] for b in beats]),
        "value": np.array([e[0] for e in expected], dtype=np.int64),
        "out_op": np.array([e[1].value for e in expected]),
        "shape": np.array([dut.lanes, dut.width, dut.out_width]),
    }
    run_cocotb(dut, "reduce", "tb.test_reduce", vectors=vectors, simulator=simulator)


def test_reduce_throughput():
    # Without back-pressure one beat enters per cycle, and rows of one beat leave one per cycle.
    dut = Reduce(lanes=16, width=32, max_row=300)
    rng = np.random.default_rng(13)
    rows = [(ReduceOp(int(rng.integers(2))), _values(rng, 16, 32, "random")) for _ in range(200)]
    beats, expected = rows_to_beats(rows, 16)
    accepted, outputs = run_full_rate(dut, beats, len(expected),
                                      lambda y: (y.value, ReduceOp(y.op)))
    assert all(accepted) and outputs == expected
