# amaranth: UnusedElaboratable=no
"""The whole accelerator in the Amaranth simulator, running hand-assembled programs.

Ext memory is a ``Memory`` inside ``hw.accelerator.SimSystem`` (no Python per cycle); results
are checked bit for bit against ``sim.golden``. Layouts: docs/isa.md.
"""
import numpy as np
import pytest

from hw.accelerator import run_program
from hw.isa import Dst, ErrorCode, Flag, ID_MAGIC, Op, Sat, encode, instr_words
from sim.golden import matmul, requant

SAT = {Sat.INT8: (-128, 127), Sat.INT9: (-256, 255), Sat.INT16: (-32768, 32767),
       Sat.UINT8: (0, 255)}
SMALL = dict(amem_depth=1024, cmem_depth=1024, bbuf_depth=1024, pbuf_depth=16, imem_depth=32)


# ------------------------------------------------------------------ memory image helpers
def words_from_bytes(values, L):
    b = (np.asarray(values, dtype=np.int64) & 0xFF).astype(np.uint8).reshape(-1, L)
    return [int.from_bytes(bytes(r), "little") for r in b]


def a_words(A, L):
    """LOAD_A layout: row n in ⌈K/L⌉ words, element j in byte j mod L of word j div L."""
    M, K = A.shape
    wk = -(-K // L)
    out = np.zeros((M, wk * L), dtype=np.int64)
    out[:, :K] = A
    return words_from_bytes(out.reshape(-1), L)


def b_words(B, L):
    """BBUF layout: word t·K + j holds B[j, tL … tL+L−1]."""
    K, N = B.shape
    T = -(-N // L)
    out = np.zeros((T, K, L), dtype=np.int64)
    for t in range(T):
        blk = B[:, t * L:(t + 1) * L]
        out[t, :, :blk.shape[1]] = blk
    return words_from_bytes(out.reshape(-1), L)


def p_words(bias, mul, sh, L):
    """LOAD_P layout: 7 words per tile (bias int32 ×L, m int16 ×L, sh uint8 ×L)."""
    N = len(bias)
    words = []
    for t in range(-(-N // L)):
        n = min(L, N - t * L)
        cols = [np.zeros(L, np.int64) for _ in range(3)]
        for c, v in zip(cols, (bias, mul, sh)):
            c[:n] = v[t * L:t * L + n]
        by = b"".join(int(x & 0xFFFFFFFF).to_bytes(4, "little") for x in cols[0])
        by += b"".join(int(x & 0xFFFF).to_bytes(2, "little") for x in cols[1])
        by += bytes(int(x) for x in cols[2])
        words += [int.from_bytes(by[i * L:(i + 1) * L], "little") for i in range(7)]
    return words


def c_from_words(words, M, T, L, base=0):
    """STORE_C layout: row n, tile t → 4 words at (n·T + t)·4, int32 little-endian."""
    out = np.zeros((M, T * L), dtype=np.int64)
    for n in range(M):
        for t in range(T):
            w = words[base + (n * T + t) * 4: base + (n * T + t) * 4 + 4]
            by = b"".join(int(x).to_bytes(L, "little") for x in w)
            out[n, t * L:(t + 1) * L] = np.frombuffer(by, dtype="<i4")
    return out


class Program:
    """An ext-memory image and a program; :meth:`run` appends the program and simulates."""

    def __init__(self, L):
        self.L = L
        self.words = []
        self.prog = []

    def put(self, words):
        addr = len(self.words)
        self.words += list(words)
        return addr

    def reserve(self, n):
        return self.put([0] * n)

    def __call__(self, op, **fields):
        self.prog.append(encode(op, **fields))

    def run(self, *, pes, prog_len=None, **kwargs):
        L = self.L
        mask = (1 << (8 * L)) - 1
        base = self.put([(ins >> (8 * L * i)) & mask for ins in self.prog
                         for i in range(instr_words(L))])
        kw = {**SMALL, **kwargs}
        kw.setdefault("max_cycles", 100_000)
        return run_program(self.words, prog_base=base,
                           prog_len=len(self.prog) if prog_len is None else prog_len,
                           pes=pes, lanes=L, **kw)


def tiles(n, L):
    return -(-n // L)


def load_and_store_matmul(pg, A, B, *, pes, bias=None, a_base=0, a_stride=None, out_base=0,
                          out_stride=None, b_base=0, p_base=0):
    """Append LOAD_A, LOAD_B, (LOAD_P,) MATMUL → CMEM, STORE_C; return the STORE_C address."""
    L = pg.L
    M, K = A.shape
    N = B.shape[1]
    T = tiles(N, L)
    a_stride = K if a_stride is None else a_stride
    out_stride = T * L if out_stride is None else out_stride
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K, a_base=a_base, a_stride=a_stride)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B, L)), count=T * K, b_base=b_base)
    flags = 0
    if bias is not None:
        pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, np.zeros(N, int), np.zeros(N, int), L)),
           count=T, p_base=p_base)
        flags = Flag.BIAS
    pg(Op.MATMUL, rows=M, k=K, tiles=T, count=N, a_base=a_base, a_stride=a_stride,
       b_base=b_base, p_base=p_base, dst=Dst.CMEM, out_base=out_base, out_stride=out_stride,
       flags=flags)
    out = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T, out_base=out_base, out_stride=out_stride)
    return out


# ------------------------------------------------------------------ matmul
MATMUL_CASES = [
    # P, L, M, K, N
    (2, 4, 1, 1, 1),
    (2, 4, 7, 13, 11),
    (2, 4, 5, 3, 2),
    pytest.param(3, 4, 7, 256, 9, marks=pytest.mark.slow),   # K = 256 (also in the Verilator layer)
    (3, 4, 11, 17, 5),
    (3, 4, 2, 31, 13),
    (1, 8, 3, 19, 10),
    (1, 32, 2, 5, 33),
]


@pytest.mark.parametrize("P, L, M, K, N", MATMUL_CASES)
def test_matmul(P, L, M, K, N):
    rng = np.random.default_rng(1000 * M + 10 * K + N)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    A[0, 0], B[0, 0] = -128, -128
    pg = Program(L)
    out = load_and_store_matmul(pg, A, B, pes=P)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["halted"] and not r["error"], r["code"]
    T = tiles(N, L)
    C = c_from_words(r["mem"], M, T, L, out)[:, :N]
    np.testing.assert_array_equal(C, matmul(A, B))
    # Cost model: ⌈M/P⌉·T·max(K, L) beat cycles, every beat one MAC cycle.
    assert r["mac_cycles"] == -(-M // P) * T * K
    assert r["instret"] == len(pg.prog)


@pytest.mark.parametrize("P, L, M, K, N, a_base, amem", [(3, 4, 8, 10, 7, 2035, 4096),
                                                          (2, 16, 5, 21, 35, 5, 1024)])
def test_matmul_unaligned_bias_backpressure(P, L, M, K, N, a_base, amem):
    """Unaligned A rows and C rows (LOAD_A rotates; STORE_C funnels two CMEM rows when L > 4),
    A rows across a block-RAM bank boundary (row 512 of AMEM), bias, slow ext memory with
    random back-pressure."""
    rng = np.random.default_rng(7 + L)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    bias = rng.integers(-(1 << 31), 1 << 31, N)
    pg = Program(L)
    out = load_and_store_matmul(pg, A, B, pes=P, bias=bias, a_base=a_base, a_stride=K + 3,
                                out_base=3, out_stride=tiles(N, L) * L + 1, b_base=17, p_base=2)
    pg(Op.HALT)
    r = pg.run(pes=P, latency=5, stall=40, amem_depth=amem)
    assert r["halted"], r["code"]
    C = c_from_words(r["mem"], M, tiles(N, L), L, out)[:, :N]
    np.testing.assert_array_equal(C, matmul(A, B, bias[None, :]))


def _requant_params(rng, n, lo_ratio, hi_ratio):
    from sim.golden import encode_multiplier
    ratio = np.exp(rng.uniform(np.log(lo_ratio), np.log(hi_ratio), n))
    m, sh = encode_multiplier(ratio)
    m[0], sh[0] = 0, 0                 # edge columns: m = 0, and the largest shift
    if n > 2:
        m[-1], sh[-1] = 32767, 47
    return m, sh


@pytest.mark.parametrize("P, L, sat, relu", [(3, 4, Sat.INT9, False), (2, 8, Sat.UINT8, True)])
def test_chain_requant_to_amem(P, L, sat, relu):
    """MATMUL with bias → requantized into AMEM ("new A = C"), then a MATMUL on that A; C of
    the first never leaves the PEs."""
    M, K1, N1, N2 = 7, 12, 10, 6
    rng = np.random.default_rng(11 + P)
    A = rng.integers(-128, 128, (M, K1))
    B1 = rng.integers(-128, 128, (K1, N1))
    B2 = rng.integers(-128, 128, (N1, N2))
    bias = rng.integers(-20000, 20000, N1)
    m1, sh1 = _requant_params(rng, N1, 2e-3, 4e-2)
    T1, T2 = tiles(N1, L), tiles(N2, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K1, a_base=0, a_stride=K1)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B1, L)), count=T1 * K1, b_base=0)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B2, L)), count=T2 * N1, b_base=300)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, m1, sh1, L)), count=T1, p_base=1)
    flags = Flag.BIAS | (Flag.RELU if relu else 0)
    pg(Op.MATMUL, rows=M, k=K1, tiles=T1, count=N1, a_base=0, a_stride=K1, b_base=0, p_base=1,
       dst=Dst.AMEM, sat=sat, out_base=201, out_stride=N1 + 1, flags=flags)
    # No SYNC: the array interlocks a MATMUL behind one that writes AMEM.
    pg(Op.MATMUL, rows=M, k=N1, tiles=T2, count=N2, a_base=201, a_stride=N1 + 1, b_base=300,
       dst=Dst.CMEM, out_base=0, out_stride=T2 * L)
    out = pg.reserve(M * T2 * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T2, out_base=0, out_stride=T2 * L)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["halted"], r["code"]
    Y = requant(matmul(A, B1, bias[None, :]), m1, sh1, *SAT[sat])
    if relu:
        Y = np.maximum(Y, 0)
    assert Y.min() < -128 or Y.max() > 127 or sat == Sat.UINT8   # the int9 range is used
    C2 = c_from_words(r["mem"], M, T2, L, out)[:, :N2]
    np.testing.assert_array_equal(C2, matmul(Y, B2))


@pytest.mark.parametrize("P, L", [(2, 4), (3, 4), (5, 4)])
def test_bbuf_transposed_and_rows(P, L):
    """Fused-QKV style: K requantized transposed into BBUF (BBUF_T), V row-wise (BBUF_ROWS);
    following MATMULs read them as B (Q·Kᵀ and P·V)."""
    Mx, D, d = 9, 8, 6
    rng = np.random.default_rng(20 + P)
    X = rng.integers(-128, 128, (Mx, D))
    Wk = rng.integers(-128, 128, (D, d))
    Wv = rng.integers(-128, 128, (D, d))
    Q = rng.integers(-128, 128, (5, d))
    Pm = rng.integers(-128, 128, (4, Mx))
    mk, shk = _requant_params(rng, d, 3e-4, 3e-3)
    mv, shv = _requant_params(rng, d, 3e-4, 3e-3)
    T = tiles(d, L)
    zero = np.zeros(d, int)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(X, L)), rows=Mx, k=D, a_base=0, a_stride=D)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(Wk, L) + b_words(Wv, L)), count=2 * T * D, b_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(zero, mk, shk, L) + p_words(zero, mv, shv, L)),
       count=2 * T, p_base=0)
    kb, vb = 400, 600
    pg(Op.MATMUL, rows=Mx, k=D, tiles=T, count=d, a_base=0, a_stride=D, b_base=0, p_base=0,
       dst=Dst.BBUF_T, sat=Sat.INT8, out_base=kb, out_stride=d)
    pg(Op.MATMUL, rows=Mx, k=D, tiles=T, count=d, a_base=0, a_stride=D, b_base=T * D, p_base=T,
       dst=Dst.BBUF_ROWS, sat=Sat.INT8, out_base=vb, out_stride=Mx)
    # S = Q·Kᵀ (B = Kᵀ: K = d, N = Mx) and O = Pm·V (B = V: K = Mx, N = d).
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(Q, L)), rows=5, k=d, a_base=100, a_stride=d)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(Pm, L)), rows=4, k=Mx, a_base=200, a_stride=Mx)
    Ts, To = tiles(Mx, L), T
    pg(Op.MATMUL, rows=5, k=d, tiles=Ts, count=Mx, a_base=100, a_stride=d, b_base=kb,
       dst=Dst.CMEM, out_base=0, out_stride=Ts * L)
    pg(Op.MATMUL, rows=4, k=Mx, tiles=To, count=d, a_base=200, a_stride=Mx, b_base=vb,
       dst=Dst.CMEM, out_base=300, out_stride=To * L)
    s_out = pg.reserve(5 * Ts * 4)
    o_out = pg.reserve(4 * To * 4)
    pg(Op.STORE_C, ext_addr=s_out, rows=5, tiles=Ts, out_base=0, out_stride=Ts * L)
    pg(Op.STORE_C, ext_addr=o_out, rows=4, tiles=To, out_base=300, out_stride=To * L)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["halted"], r["code"]
    assert r["stall_wb"] > 0   # K = 8 is short: the write-back holds some last beats
    Kq = requant(matmul(X, Wk), mk, shk, -128, 127)
    V = requant(matmul(X, Wv), mv, shv, -128, 127)
    S = c_from_words(r["mem"], 5, Ts, L, s_out)[:, :Mx]
    O = c_from_words(r["mem"], 4, To, L, o_out)[:, :d]
    np.testing.assert_array_equal(S, matmul(Q, Kq.T))
    np.testing.assert_array_equal(O, matmul(Pm, V))


def test_accumulate_k_split():
    """C = A1·B1 + bias, then ACCUM += A2·B2 (and a K = 1 ACCUM right behind it)."""
    P, L, M, N = 2, 4, 3, 6
    rng = np.random.default_rng(5)
    A1 = rng.integers(-128, 128, (M, 5))
    A2 = rng.integers(-128, 128, (M, 1))
    A3 = rng.integers(-128, 128, (M, 2))
    B1 = rng.integers(-128, 128, (5, N))
    B2 = rng.integers(-128, 128, (1, N))
    B3 = rng.integers(-128, 128, (2, N))
    bias = rng.integers(-(1 << 30), 1 << 30, N)
    T = tiles(N, L)
    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(np.hstack([A1, A2, A3]), L)), rows=M, k=8, a_base=0,
       a_stride=8)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B1, L) + b_words(B2, L) + b_words(B3, L)),
       count=T * 8, b_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, np.zeros(N, int), np.zeros(N, int), L)),
       count=T, p_base=0)
    common = dict(rows=M, tiles=T, count=N, a_stride=8, dst=Dst.CMEM, out_base=2,
                  out_stride=T * L + 1)
    pg(Op.MATMUL, k=5, a_base=0, b_base=0, flags=Flag.BIAS, **common)
    pg(Op.MATMUL, k=1, a_base=5, b_base=5 * T, flags=Flag.ACCUM, **common)
    pg(Op.MATMUL, k=2, a_base=6, b_base=6 * T, flags=Flag.ACCUM, **common)
    out = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T, out_base=2, out_stride=T * L + 1)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["halted"], r["code"]
    C = c_from_words(r["mem"], M, T, L, out)[:, :N]
    want = matmul(A3, B3, matmul(A2, B2, matmul(A1, B1, bias[None, :])))
    np.testing.assert_array_equal(C, want)


# ------------------------------------------------------------------ errors, CSRs
def _run_many(programs, *, pes, lanes, bound, **depths):
    """Run several programs one after the other on one simulated system (restart after an
    error or a halt); return per program (STATUS, PC, CYCLES, cycles until busy dropped)."""
    from amaranth.sim import Simulator
    from hw.accelerator import SimSystem, csr_read, csr_write
    from hw.isa import Csr
    L = lanes
    mask = (1 << (8 * L)) - 1
    words, entries = [], []
    for prog, prog_len in programs:
        entries.append((len(words), prog_len))
        words += [(ins >> (8 * L * i)) & mask for ins in prog for i in range(instr_words(L))]
    sysm = SimSystem(ext_depth=1 << max(4, (len(words) - 1).bit_length()), ext_init=words,
                     pes=pes, lanes=lanes, **{**SMALL, **depths})
    results = []

    async def bench(ctx):
        bus = sysm.bus
        for base, n in entries:
            await csr_write(ctx, bus, Csr.PROG_BASE, base)
            await csr_write(ctx, bus, Csr.PROG_LEN, n)
            await csr_write(ctx, bus, Csr.CTRL, 1)
            waited = 0
            while True:
                status = await csr_read(ctx, bus, Csr.STATUS)
                waited += 2
                if not status & 1:
                    break
                assert waited < bound, f"still busy after {waited} cycles"
            results.append((status, await csr_read(ctx, bus, Csr.PC),
                            await csr_read(ctx, bus, Csr.CYCLES), waited))
            await csr_write(ctx, bus, Csr.CTRL, 2)
            assert await csr_read(ctx, bus, Csr.STATUS) == 0
            assert await csr_read(ctx, bus, Csr.CYCLES) == 0

    sim = Simulator(sysm)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def _error_programs(P, L, d):
    """(program, prog_len, expected code, index of the bad instruction) for every error."""
    E = ErrorCode
    mm = dict(rows=P + 1, k=4, tiles=2, a_base=0, a_stride=4, b_base=0, dst=Dst.CMEM,
              out_base=0, out_stride=2 * L)
    bad = [
        (E.ILLEGAL_OPCODE, encode(0x7F)),
        (E.ILLEGAL_OPCODE, encode(0x03)),
        (E.AMEM_RANGE, encode(Op.LOAD_A, rows=2 * P, k=5, a_base=0, a_stride=d["amem_depth"] - 4)),
        (E.AMEM_RANGE, encode(Op.MATMUL, **{**mm, "a_base": d["amem_depth"] - 3})),
        (E.AMEM_RANGE, encode(Op.MATMUL, **{**mm, "dst": Dst.AMEM, "out_base": d["amem_depth"] - 1,
                                            "count": 2})),
        (E.CMEM_RANGE, encode(Op.STORE_C, rows=1, tiles=1, out_base=d["cmem_depth"] - L + 1)),
        (E.CMEM_RANGE, encode(Op.MATMUL, **{**mm, "out_stride": d["cmem_depth"]})),
        (E.BBUF_RANGE, encode(Op.LOAD_B, count=d["bbuf_depth"] + 1)),
        (E.BBUF_RANGE, encode(Op.MATMUL, **{**mm, "b_base": d["bbuf_depth"] - 7})),
        (E.BBUF_RANGE, encode(Op.MATMUL, **{**mm, "dst": Dst.BBUF_T,
                                            "out_base": d["bbuf_depth"] - 1})),
        (E.BBUF_RANGE, encode(Op.MATMUL, **{**mm, "dst": Dst.BBUF_ROWS,
                                            "out_stride": d["bbuf_depth"]})),
        (E.PBUF_RANGE, encode(Op.LOAD_P, count=d["pbuf_depth"], p_base=1)),
        (E.PBUF_RANGE, encode(Op.MATMUL, **{**mm, "flags": Flag.BIAS,
                                            "p_base": d["pbuf_depth"] - 1})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "k": 0})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "rows": 0})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "tiles": 0})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "dst": Dst.BBUF_ROWS, "flags": Flag.ACCUM})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "dst": 15})),   # (4: AMEM_T)
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "sat": 4})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "flags": 64})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "count": 2 * L + 1})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "dst": Dst.AMEM, "sat": Sat.INT16})),
        (E.BAD_FIELD, encode(Op.MATMUL, **{**mm, "dst": Dst.BBUF_T, "sat": Sat.INT9})),
    ]
    nop, halt = encode(Op.NOP), encode(Op.HALT)
    progs = [([nop, ins, halt], 3, code, 1) for code, ins in bad]
    progs += [
        ([nop, halt], 0, E.PROGRAM_RANGE, 0),                       # PROG_LEN = 0
        ([nop, halt], d["imem_depth"] + 1, E.PROGRAM_RANGE, 0),     # PROG_LEN > IMEM depth
        ([nop, encode(Op.SYNC)], 2, E.PROGRAM_RANGE, 2),            # runs past the end
    ]
    return progs


def test_error_codes_bounded():
    """Every error code is raised, by the bad instruction, within a bounded number of cycles,
    and the accelerator restarts cleanly afterwards."""
    P, L = 2, 4
    d = dict(SMALL, imem_depth=8)
    progs = _error_programs(P, L, d)
    progs.append(([encode(Op.NOP), encode(Op.HALT)], 2, ErrorCode.NONE, 1))
    res = _run_many([(p, n) for p, n, _, _ in progs], pes=P, lanes=L, bound=200, **d)
    seen = set()
    for (prog, n, code, pc), (status, got_pc, cycles, waited) in zip(progs, res):
        assert (status >> 8) & 0xFF == code, (code, prog)
        assert bool(status & 4) == (code != ErrorCode.NONE)
        assert bool(status & 2) == (code == ErrorCode.NONE)
        assert got_pc == pc
        assert waited < 80 and cycles < 60, (code, waited, cycles)
        seen.add(code)
    assert seen == set(ErrorCode)


def test_csrs_and_cost_model():
    """ID, CONFIG, counters; MAC_CYCLES and CYCLES against the cost model."""
    P, L, M, K, N = 3, 4, 10, 12, 9
    rng = np.random.default_rng(3)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    pg = Program(L)
    T = tiles(N, L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K, a_base=0, a_stride=K)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B, L)), count=T * K, b_base=0)
    pg(Op.SYNC)
    mm = dict(rows=M, k=K, tiles=T, count=N, a_base=0, a_stride=K, b_base=0, dst=Dst.CMEM,
              out_base=0, out_stride=T * L)
    for _ in range(3):
        pg(Op.MATMUL, **mm)
    pg(Op.SYNC)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["id"] == ID_MAGIC
    assert r["config"] == P | L << 8 | 10 << 16 | 10 << 24   # log2 of AMEM, BBUF depth
    assert r["halted"] and not r["error"] and r["pc"] == len(pg.prog) - 1
    assert r["instret"] == len(pg.prog)
    beats = -(-M // P) * T * K
    assert r["mac_cycles"] == 3 * beats
    assert r["stall_wb"] == 0
    # Loads: ⌈K/L⌉·M + T·K words; the three MATMULs back to back; drain and fixed costs.
    loads = -(-K // L) * M + T * K
    assert r["stall_dma"] >= loads
    overhead = r["cycles"] - r["stall_dma"] - r["mac_cycles"]
    assert 0 < overhead < 150, overhead


def matmul_latency(P, L, M, K, N, *, dst=Dst.CMEM, **depths):
    """Cycles one MATMUL adds to a program (dispatch to results written), from two programs of
    equal length with and without it; returns (cycles, ideal = ⌈M/P⌉·⌈N/L⌉·K)."""
    T = tiles(N, L)
    mm = dict(rows=M, k=K, tiles=T, count=N, a_base=0, a_stride=K, b_base=0, dst=dst, sat=0,
              out_base=0, out_stride=T * L)
    sync, halt = encode(Op.SYNC), encode(Op.HALT)
    res = _run_many([([sync, halt, halt], 3), ([sync, encode(Op.MATMUL, **mm), halt], 3)],
                    pes=P, lanes=L, bound=10 ** 7, **depths)
    return res[1][2] - res[0][2], -(-M // P) * T * K


def test_matmul_latency_small():
    cycles, ideal = matmul_latency(3, 4, 10, 12, 9)
    assert ideal == 144
    # Fixed cost: dispatch, pipeline and drain of the last tile (fetch/decode cancels out).
    assert ideal < cycles <= ideal + 9 + PE_TAIL(4), cycles


def PE_TAIL(L):
    from hw.pe import PE
    return PE.MAC_LATENCY + 1 + L + PE.D_Y + 2


@pytest.mark.slow
def test_kwt_qkv_shape_p8_l16():
    """99×64 · 64×192 at P = 8, L = 16 (the fused QKV projection of KWT-1): bit-exact, and
    one MATMUL within ⌈99/8⌉·12·64 cycles + a small constant (utilization ≥ 99 %)."""
    P, L, M, K, N = 8, 16, 99, 64, 192
    big = dict(amem_depth=4096, cmem_depth=4096, bbuf_depth=4096, pbuf_depth=64,
               imem_depth=64)
    rng = np.random.default_rng(99)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    pg = Program(L)
    out = load_and_store_matmul(pg, A, B, pes=P)
    pg(Op.HALT)
    r = pg.run(pes=P, max_cycles=10 ** 6, **big)
    assert r["halted"], r["code"]
    C = c_from_words(r["mem"], M, tiles(N, L), L, out)[:, :N]
    np.testing.assert_array_equal(C, matmul(A, B))
    assert r["mac_cycles"] == 13 * 12 * 64
    cycles, ideal = matmul_latency(P, L, M, K, N, **big)
    assert ideal == 9984
    assert cycles <= ideal + 9 + PE_TAIL(L), cycles
    print(f"99x64x192 at P=8, L=16: {cycles} cycles, ideal {ideal}, utilization "
          f"{ideal / cycles:.4f}; whole program {r['cycles']} cycles")
