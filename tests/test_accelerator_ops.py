# amaranth: UnusedElaboratable=no
"""The transformer instructions of docs/isa_transformer.md on the whole accelerator
(``hw.accelerator.SimSystem`` in the Amaranth simulator, hand-assembled programs): the MATMUL
epilogues (RSCALE, REQ, ACT, ACCUM into AMEM), LOAD_C and LOAD_T, the row operations, the load
lag, the new error codes, and a whole encoder layer — each bit-exact with ``sim.golden``."""
import numpy as np

from hw.isa import Dst, ErrorCode, Flag, Op, Sat, encode
from sim.golden import (INT8, INT9, INT16, activation, add, divide, encode_multiplier,
                        encoder_layer, exp_weights, gelu_lut, layernorm, layernorm_constants,
                        matmul, requant, rshift_round, softmax, softmax_constants)
from sim.golden.attention import mantissa15
from sim.qmodel import QLayer
from tests.test_accelerator import (SMALL, Program, _run_many, a_words, b_words, c_from_words,
                                    p_words, tiles)


def c_words(C, L):
    """LOAD_C layout (STORE_C's): row n, tile t → 4 words at (n·tiles + t)·4, L int32 LE."""
    M, N = C.shape
    T = tiles(N, L)
    out = np.zeros((M, T * L), dtype="<i4")
    out[:, :N] = C
    by = out.tobytes()
    return [int.from_bytes(by[i:i + L], "little") for i in range(0, len(by), L)]


def t_words(table, L):
    """LOAD_T layout: entry e as int16 LE at bytes 2(e mod L/2) of word e div (L/2)."""
    t = np.asarray(table, dtype="<i2")
    t = np.concatenate([t, np.zeros(-len(t) % (L // 2), dtype="<i2")])
    by = t.tobytes()
    return [int.from_bytes(by[i:i + L], "little") for i in range(0, len(by), L)]


def observe(pg, *, rows, n, a_base, a_stride, b_base, out_base):
    """Append an identity MATMUL copying AMEM rows (n int9 each) into CMEM and a STORE_C of
    them; return the ext address (the AMEM contents become visible bit for bit)."""
    L = pg.L
    T = tiles(n, L)
    eye = np.eye(n, dtype=np.int64)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(eye, L)), count=T * n, b_base=b_base)
    pg(Op.MATMUL, rows=rows, k=n, tiles=T, count=n, a_base=a_base, a_stride=a_stride,
       b_base=b_base, dst=Dst.CMEM, out_base=out_base, out_stride=T * L)
    out = pg.reserve(rows * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=rows, tiles=T, out_base=out_base, out_stride=T * L)
    return out, T


def fit(acc, target):
    """Per-column (m, sh) mapping the largest |acc| of each column to about ``target``."""
    amax = np.maximum(np.abs(np.asarray(acc)).max(axis=0), 1)
    return encode_multiplier(target / amax)


def test_epilogues_load_c_load_t():
    """ACCUM into AMEM (start values loaded with LOAD_C), REQ into CMEM, ACT with RELU on both
    tables (loaded with two LOAD_Ts, one partial and unaligned), LOAD_C/STORE_C round trip."""
    P, L = 2, 4
    rng = np.random.default_rng(71)
    M, K, N = 5, 7, 6
    T = tiles(N, L)
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    C0 = rng.integers(-(1 << 20), 1 << 20, (M, T * L))
    bias = rng.integers(-5000, 5000, N)
    m, sh = fit(matmul(A, B, bias[None, :]), 150)
    lut = rng.integers(-256, 256, 512)
    patch = rng.integers(-256, 256, 3)
    table = lut.copy()
    table[300:303] = patch

    pg = Program(L)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(C0, L)), rows=M, tiles=T, out_base=0,
       out_stride=T * L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K, a_base=512, a_stride=K)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B, L)), count=T * K, b_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(bias, m, sh, L)), count=T, p_base=0)
    pg(Op.LOAD_T, ext_addr=pg.put(t_words(lut, L)), count=512, a_base=0)
    pg(Op.LOAD_T, ext_addr=pg.put(t_words(patch, L)), count=3, a_base=300)
    mm = dict(rows=M, k=K, tiles=T, count=N, a_base=512, a_stride=K, b_base=0, p_base=0)
    pg(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT9, flags=Flag.ACCUM, out_base=0,
       out_stride=T * L, **mm)
    pg(Op.MATMUL, dst=Dst.CMEM, sat=Sat.INT16, flags=Flag.BIAS | Flag.REQ, out_base=200,
       out_stride=T * L, **mm)
    pg(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT8, flags=Flag.BIAS | Flag.ACT | Flag.RELU, imm=1,
       out_base=100, out_stride=T * L, **mm)
    pg(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT8, flags=Flag.BIAS | Flag.ACT, imm=0,
       out_base=150, out_stride=T * L, **mm)
    o_req = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=o_req, rows=M, tiles=T, out_base=200, out_stride=T * L)
    o_c0 = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=o_c0, rows=M, tiles=T, out_base=0, out_stride=T * L)
    obs = [observe(pg, rows=M, n=N, a_base=base, a_stride=T * L, b_base=100 + 40 * i,
                   out_base=300 + 100 * i)[0] for i, base in enumerate((0, 100, 150))]
    pg(Op.HALT)
    r = pg.run(pes=P, imem_depth=32)
    assert r["halted"], r["code"]

    s = matmul(A, B)
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o_c0), C0)
    want_accum = requant(s + C0[:, :N], m, sh, *INT9)
    y8 = requant(s + bias, m, sh, *INT8)
    want = [want_accum, activation(np.maximum(y8, 0), table[256:]), activation(y8, table[:256])]
    for o, w in zip(obs, want):
        np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o)[:, :N], w)
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, o_req)[:, :N],
                                  requant(s + bias, m, sh, *INT16))


def test_load_c_unaligned_rows():
    """LOAD_C at L = 8 (two int32 per CMEM row) with row starts that are not a multiple of
    L/4: each word is rotated and written in two CMEM rows; STORE_C reads them back."""
    P, L = 3, 8
    rng = np.random.default_rng(72)
    M, T = 4, 2
    C = rng.integers(-(1 << 31), 1 << 31, (M, T * L))
    pg = Program(L)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(C, L)), rows=M, tiles=T, out_base=3, out_stride=19)
    out = pg.reserve(M * T * 4)
    pg(Op.STORE_C, ext_addr=out, rows=M, tiles=T, out_base=3, out_stride=19)
    pg(Op.HALT)
    r = pg.run(pes=P)
    assert r["halted"], r["code"]
    np.testing.assert_array_equal(c_from_words(r["mem"], M, T, L, out), C)


def test_row_ops_and_rscale():
    """SOFTMAX (attention mode: weights into AMEM, row scales used by a P·V MATMUL with
    RSCALE + REQ), SOFTMAX NORM into CMEM, LAYERNORM into CMEM, RADD in place on the P·V result
    (after a STORE_C of it, ordered by an empty LOAD); P = 3 with 7 rows."""
    P, L = 3, 4
    rng = np.random.default_rng(73)
    M, k = 7, 9
    Tk = tiles(k, L)
    S = rng.integers(-3000, 3000, (M, Tk * L))
    S[2] = 5                                              # all equal
    c_e, sh_e = softmax_constants(2e-3)
    Nv = 5
    Tv = tiles(Nv, L)
    V = rng.integers(-128, 128, (k, Nv))
    w = exp_weights(S[:, :k], c_e, sh_e)
    m_r, sh_r = mantissa15(divide(np.full(M, 1 << 32), w.sum(-1)), 24)
    t = rshift_round(matmul(w, V) * m_r[:, None], sh_r[:, None])
    m_a, sh_a = fit(t, 20000)
    o = requant(t, m_a, sh_a, *INT16)
    H = rng.integers(-20000, 20000, (M, Tk * L))
    lc = layernorm_constants(rng.normal(1, 0.3, k), rng.normal(0, 0.3, k), 1e-3, 0.01, 1e-5)
    X = rng.integers(-128, 128, (M, Nv))
    m_x, sh_x = rng.integers(1, 1 << 15, Nv), rng.integers(5, 12, Nv)

    pg = Program(L)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(S, L)), rows=M, tiles=Tk, out_base=0,
       out_stride=Tk * L)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(H, L)), rows=M, tiles=Tk, out_base=500,
       out_stride=Tk * L)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(V, L)), count=Tv * k, b_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(np.zeros(Nv, int), m_a, sh_a, L)), count=Tv,
       p_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(lc["B"], lc["G"], np.full(k, lc["sh_o"]), L)),
       count=Tk, p_base=4)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(np.zeros(Nv, int), m_x, sh_x, L)), count=Tv,
       p_base=8)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(X, L)), rows=M, k=Nv, a_base=700, a_stride=Nv)
    pg(Op.SOFTMAX, rows=M, k=k, a_base=0, a_stride=Tk * L, dst=Dst.AMEM, out_base=0,
       out_stride=k, imm=c_e | sh_e << 16)
    pg(Op.MATMUL, rows=M, k=k, tiles=Tv, count=Nv, a_base=0, a_stride=k, b_base=0, p_base=0,
       dst=Dst.CMEM, sat=Sat.INT16, flags=Flag.RSCALE | Flag.REQ, out_base=300,
       out_stride=Tv * L)
    pg(Op.SOFTMAX, flags=Flag.NORM, rows=M, k=k, a_base=0, a_stride=Tk * L, dst=Dst.CMEM,
       out_base=100, out_stride=Tk * L, imm=c_e | sh_e << 16)
    pg(Op.LAYERNORM, rows=M, k=k, a_base=500, a_stride=Tk * L, dst=Dst.CMEM, sat=Sat.INT16,
       out_base=600, out_stride=Tk * L, p_base=4, imm=lc["r_d"], count=lc["E"] & 0xFFFFFFFF,
       tiles=lc["E"] >> 32)
    outs = {}
    for name, base, T in (("pv", 300, Tv), ("norm", 100, Tk), ("ln", 600, Tk)):
        outs[name] = pg.reserve(M * T * 4)
        pg(Op.STORE_C, ext_addr=outs[name], rows=M, tiles=T, out_base=base, out_stride=T * L)
    pg(Op.LOAD_B, count=0)                 # orders the STORE_Cs before the RADD (lag 0)
    pg(Op.RADD, rows=M, k=Nv, a_base=300, a_stride=Tv * L, b_base=700, imm=Nv, dst=Dst.CMEM,
       sat=Sat.INT16, out_base=300, out_stride=Tv * L, p_base=8)
    outs["radd"] = pg.reserve(M * Tv * 4)
    pg(Op.STORE_C, ext_addr=outs["radd"], rows=M, tiles=Tv, out_base=300, out_stride=Tv * L)
    outs["w"], _ = observe(pg, rows=M, n=k, a_base=0, a_stride=k, b_base=200, out_base=800)
    pg(Op.HALT)
    r = pg.run(pes=P, imem_depth=32)
    assert r["halted"], r["code"]

    def got(name, n, T):
        return c_from_words(r["mem"], M, T, L, outs[name])[:, :n]
    np.testing.assert_array_equal(got("w", k, Tk), w)
    np.testing.assert_array_equal(got("pv", Nv, Tv), o)
    np.testing.assert_array_equal(got("norm", k, Tk), softmax(S[:, :k], c_e, sh_e))
    np.testing.assert_array_equal(
        got("ln", k, Tk), layernorm(H[:, :k], lc["r_d"], lc["E"], lc["G"], lc["B"], lc["sh_o"],
                                    *INT16))
    np.testing.assert_array_equal(got("radd", Nv, Tv), add(o, X, m_x, sh_x, *INT16))


def _random_layer(rng, x, D, F):
    """A QLayer with random int8 weights whose requantization constants are fitted to the
    golden intermediates of ``x`` (so no stage saturates everywhere or vanishes)."""
    wqkv = rng.integers(-127, 128, (3 * D, D))
    acc = matmul(x, wqkv.T)
    m_qkv, sh_qkv = fit(acc, 100)
    q = requant(acc[:, :D], m_qkv[:D], sh_qkv[:D], *INT9)
    kv = requant(acc[:, D:], m_qkv[D:], sh_qkv[D:], *INT8)
    k, v = kv[:, :D], kv[:, D:]
    S = matmul(q, k.T)
    c_e, sh_e = softmax_constants(6.0 / max(1, int(np.ptp(S))))
    w = exp_weights(S, c_e, sh_e)
    m_r, sh_r = mantissa15(divide(np.full(len(x), 1 << 32), w.sum(-1)), 24)
    t = rshift_round(matmul(w, v) * m_r[:, None], sh_r[:, None])
    m_a, sh_a = fit(t, 200)
    a = requant(t, m_a, sh_a, *INT9)
    wo = rng.integers(-127, 128, (D, D))
    bo = rng.integers(-3000, 3000, D)
    m_o, sh_o = fit(matmul(a, wo.T, bo), 8000)
    o = requant(matmul(a, wo.T, bo), m_o, sh_o, *INT16)
    m_r1, sh_r1 = encode_multiplier(np.full(D, 40.0))
    h1 = add(o, x, m_r1, sh_r1, *INT16)
    ln1 = layernorm_constants(rng.normal(1, 0.3, D), rng.normal(0, 0.3, D), 1e-3, 0.015, 1e-5)
    x1 = layernorm(h1, **ln1, lo=INT9[0], hi=INT9[1])
    w1 = rng.integers(-127, 128, (F, D))
    b1 = rng.integers(-3000, 3000, F)
    m_1, sh_1 = fit(matmul(x1, w1.T, b1), 110)
    g = activation(requant(matmul(x1, w1.T, b1), m_1, sh_1, *INT8), gelu_lut(0.03, 3.0 / 255))
    w2 = rng.integers(-127, 128, (D, F))
    b2 = rng.integers(-3000, 3000, D)
    m_2, sh_2 = fit(matmul(g, w2.T, b2), 8000)
    m_r2, sh_r2 = encode_multiplier(np.full(D, 30.0))
    ln2 = layernorm_constants(rng.normal(1, 0.3, D), rng.normal(0, 0.3, D), 1e-3, 0.015, 1e-5)
    return QLayer(wqkv=wqkv, m_qkv=m_qkv, sh_qkv=sh_qkv, c_e=c_e, sh_e=sh_e, m_a=m_a, sh_a=sh_a,
                  wo=wo, bo=bo, m_o=m_o, sh_o=sh_o, m_r1=m_r1, sh_r1=sh_r1, ln1=ln1, w1=w1,
                  b1=b1, m_1=m_1, sh_1=sh_1, gelu=gelu_lut(0.03, 3.0 / 255), w2=w2, b2=b2,
                  m_2=m_2, sh_2=sh_2, m_r2=m_r2, sh_r2=sh_r2, ln2=ln2)


def test_encoder_layer_chain():
    """One post-norm encoder layer as a program — QKV (q to AMEM, Kᵀ and V to BBUF), scores,
    SOFTMAX, P·V with RSCALE, Wo with REQ, RADD, LAYERNORM, W1 with ACT (GELU table), W2 with
    REQ, RADD, LAYERNORM — bit-exact with ``sim.golden.encoder_layer`` (P = 3, 7 tokens, dim
    8, MLP 12)."""
    P, L = 3, 4
    N, D, F = 7, 8, 12
    rng = np.random.default_rng(74)
    x = rng.integers(-128, 128, (N, D))           # int9 input (LOAD_A carries int8)
    ly = _random_layer(rng, x, D, F)
    TD, TF, TN = tiles(D, L), tiles(F, L), tiles(N, L)
    R = tiles(N, P)                                   # local rows per PE
    z = np.zeros

    pg = Program(L)
    # Operands. AMEM: x 0, q 100, w 200, a 300, x1 400, g 500. CMEM: S 0, o/h1 100, h2 200,
    # x2 300. BBUF: Wqkvᵀ 0, Kᵀ 100, V 150, Woᵀ 200, W1ᵀ 250, W2ᵀ 300. PBUF tiles below.
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(x, L)), rows=N, k=D, a_base=0, a_stride=D)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(ly.wqkv.T, L)), count=3 * TD * D, b_base=0)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(ly.wo.T, L)), count=TD * D, b_base=200)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(ly.w1.T, L)), count=TF * D, b_base=250)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(ly.w2.T, L)), count=TD * F, b_base=300)
    params = [   # (p_base, bias, m, sh)
        (0, z(3 * D, int), ly.m_qkv, ly.sh_qkv),
        (6, z(D, int), ly.m_a, ly.sh_a),
        (8, ly.bo, ly.m_o, ly.sh_o),
        (10, z(D, int), ly.m_r1, ly.sh_r1),
        (12, ly.ln1["B"], ly.ln1["G"], np.full(D, ly.ln1["sh_o"])),
        (14, ly.b1, ly.m_1, ly.sh_1),
        (17, ly.b2, ly.m_2, ly.sh_2),
        (19, z(D, int), ly.m_r2, ly.sh_r2),
        (21, ly.ln2["B"], ly.ln2["G"], np.full(D, ly.ln2["sh_o"])),
    ]
    for p_base, b, mm, ss in params:
        pg(Op.LOAD_P, ext_addr=pg.put(p_words(b, mm, ss, L)), count=tiles(len(b), L),
           p_base=p_base)
    pg(Op.LOAD_T, ext_addr=pg.put(t_words(ly.gelu, L)), count=256, a_base=0)

    def mm(**f):
        pg(Op.MATMUL, **f)

    # QKV: q → AMEM (int9), Kᵀ → BBUF_T (K of q·kᵀ = D), V → BBUF_ROWS (K of P·V = N).
    mm(rows=N, k=D, tiles=TD, a_base=0, a_stride=D, b_base=0, p_base=0, dst=Dst.AMEM,
       sat=Sat.INT9, out_base=100, out_stride=D)
    mm(rows=N, k=D, tiles=TD, a_base=0, a_stride=D, b_base=TD * D, p_base=TD, dst=Dst.BBUF_T,
       sat=Sat.INT8, out_base=100, out_stride=D)
    mm(rows=N, k=D, tiles=TD, a_base=0, a_stride=D, b_base=2 * TD * D, p_base=2 * TD,
       dst=Dst.BBUF_ROWS, sat=Sat.INT8, out_base=150, out_stride=N)
    # Scores, softmax weights and row scales, P·V normalized by the row scale.
    mm(rows=N, k=D, tiles=TN, count=N, a_base=100, a_stride=D, b_base=100, dst=Dst.CMEM,
       out_base=0, out_stride=TN * L)
    pg(Op.SOFTMAX, rows=N, k=N, a_base=0, a_stride=TN * L, dst=Dst.AMEM, out_base=200,
       out_stride=N, imm=ly.c_e | ly.sh_e << 16)
    mm(rows=N, k=N, tiles=TD, a_base=200, a_stride=N, b_base=150, p_base=6, dst=Dst.AMEM,
       sat=Sat.INT9, flags=Flag.RSCALE, out_base=300, out_stride=D)
    # Wo (int16, REQ), residual, LayerNorm.
    mm(rows=N, k=D, tiles=TD, a_base=300, a_stride=D, b_base=200, p_base=8, dst=Dst.CMEM,
       sat=Sat.INT16, flags=Flag.BIAS | Flag.REQ, out_base=100, out_stride=D)
    pg(Op.RADD, rows=N, k=D, a_base=100, a_stride=D, b_base=0, imm=D, dst=Dst.CMEM,
       sat=Sat.INT16, out_base=100, out_stride=D, p_base=10)
    E1 = ly.ln1["E"]
    pg(Op.LAYERNORM, rows=N, k=D, a_base=100, a_stride=D, dst=Dst.AMEM, sat=Sat.INT9,
       out_base=400, out_stride=D, p_base=12, imm=ly.ln1["r_d"], count=E1 & 0xFFFFFFFF,
       tiles=E1 >> 32)
    # FFN: W1 + GELU table, W2 (int16, REQ), residual, LayerNorm into CMEM.
    mm(rows=N, k=D, tiles=TF, a_base=400, a_stride=D, b_base=250, p_base=14, dst=Dst.AMEM,
       sat=Sat.INT8, flags=Flag.BIAS | Flag.ACT, imm=0, out_base=500, out_stride=F)
    mm(rows=N, k=F, tiles=TD, a_base=500, a_stride=F, b_base=300, p_base=17, dst=Dst.CMEM,
       sat=Sat.INT16, flags=Flag.BIAS | Flag.REQ, out_base=200, out_stride=D)
    pg(Op.RADD, rows=N, k=D, a_base=200, a_stride=D, b_base=400, imm=D, dst=Dst.CMEM,
       sat=Sat.INT16, out_base=200, out_stride=D, p_base=19)
    E2 = ly.ln2["E"]
    pg(Op.LAYERNORM, rows=N, k=D, a_base=200, a_stride=D, dst=Dst.CMEM, sat=Sat.INT9,
       out_base=300, out_stride=D, p_base=21, imm=ly.ln2["r_d"], count=E2 & 0xFFFFFFFF,
       tiles=E2 >> 32)
    out = pg.reserve(N * TD * 4)
    pg(Op.STORE_C, ext_addr=out, rows=N, tiles=TD, out_base=300, out_stride=D)
    pg(Op.HALT)
    assert R * D <= 100 and len(pg.prog) <= 64
    r = pg.run(pes=P, imem_depth=64, pbuf_depth=32)
    assert r["halted"], r["code"]
    trace = {}
    want = encoder_layer(x, ly, heads=1, trace=trace)
    # Every stage does something: no intermediate is constant or saturated throughout.
    for key in ("q", "attn", "h1", "x1", "gelu", "h2"):
        assert np.ptp(trace[key]) > 10, key
    np.testing.assert_array_equal(c_from_words(r["mem"], N, TD, L, out), want)


def _new_error_programs(P, L, d):
    """(instruction, expected code) for the checks docs/isa_transformer.md adds."""
    E = ErrorCode
    mm = dict(rows=P + 1, k=4, tiles=2, a_base=0, a_stride=4, b_base=0, out_base=0,
              out_stride=2 * L, p_base=0)
    row = dict(rows=P + 1, k=4, a_base=0, a_stride=4, out_base=0, out_stride=4, p_base=0)
    big = 257 * P                                   # 257 local rows: past the RS table
    return [
        (encode(Op.LOAD_A, rows=1, k=4, flags=Flag.BIAS), E.BAD_FIELD),   # flag on a load
        (encode(Op.SOFTMAX, flags=Flag.BIAS, **row), E.BAD_FIELD),        # only NORM
        (encode(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT9, flags=Flag.REQ, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT9, flags=Flag.ACT, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.CMEM, flags=Flag.ACT, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.CMEM, flags=Flag.RSCALE, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.BBUF_T, flags=Flag.ACCUM, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, **{**mm, "rows": big, "a_stride": 0, "out_stride": 0},
                dst=Dst.AMEM, sat=Sat.INT9, flags=Flag.RSCALE), E.BAD_FIELD),
        (encode(Op.SOFTMAX, **{**row, "rows": big, "a_stride": 0, "out_stride": 0}),
         E.BAD_FIELD),
        (encode(Op.SOFTMAX, **{**row, "k": 0}), E.BAD_FIELD),
        (encode(Op.LAYERNORM, **{**row, "k": 1025}), E.BAD_FIELD),
        (encode(Op.RADD, **{**row, "rows": 0}), E.BAD_FIELD),
        (encode(Op.RADD, dst=Dst.BBUF_ROWS, **row), E.BAD_FIELD),
        (encode(Op.LAYERNORM, sat=5, **row), E.BAD_FIELD),
        (encode(Op.RADD, dst=Dst.AMEM, sat=Sat.INT16, **row), E.BAD_FIELD),
        (encode(Op.LOAD_T, a_base=500, count=13), E.BAD_FIELD),
        (encode(Op.RADD, **row, b_base=d["amem_depth"] - 2), E.AMEM_RANGE),
        (encode(Op.SOFTMAX, **{**row, "out_base": d["amem_depth"] - 2}, dst=Dst.AMEM),
         E.AMEM_RANGE),
        (encode(Op.RADD, **{**row, "a_base": d["cmem_depth"]}, b_base=d["amem_depth"]),
         E.AMEM_RANGE),                               # AMEM before CMEM
        (encode(Op.LAYERNORM, **{**row, "a_base": d["cmem_depth"] - 2}), E.CMEM_RANGE),
        (encode(Op.RADD, **{**row, "out_base": d["cmem_depth"] - 2}), E.CMEM_RANGE),
        (encode(Op.LOAD_C, rows=1, tiles=1, out_base=d["cmem_depth"] - L + 1), E.CMEM_RANGE),
        (encode(Op.MATMUL, **{**mm, "out_base": d["cmem_depth"]}, dst=Dst.AMEM, sat=Sat.INT9,
                flags=Flag.ACCUM), E.CMEM_RANGE),    # ACCUM reads CMEM at the AMEM output
        (encode(Op.LAYERNORM, **{**row, "k": 8, "p_base": d["pbuf_depth"] - 1}), E.PBUF_RANGE),
        (encode(Op.MATMUL, **{**mm, "p_base": d["pbuf_depth"] - 1}, dst=Dst.CMEM,
                sat=Sat.INT16, flags=Flag.REQ), E.PBUF_RANGE),
        # LAYERNORM RES, MATMUL / SOFTMAX MAXC
        (encode(Op.LAYERNORM, flags=Flag.RES, **{**row, "rows": 17 * P, "a_stride": 0,
                                                 "out_stride": 0}), E.BAD_FIELD),  # > 16 rows
        (encode(Op.RADD, flags=Flag.RES, **row), E.BAD_FIELD),
        (encode(Op.RADD, flags=Flag.MAXC, **row), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.AMEM, sat=Sat.INT9, flags=Flag.MAXC, **mm), E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.CMEM, sat=Sat.INT16, flags=Flag.MAXC | Flag.REQ, **mm),
         E.BAD_FIELD),
        (encode(Op.MATMUL, dst=Dst.CMEM, flags=Flag.MAXC, **mm), E.BAD_FIELD),  # stride = N
        (encode(Op.MATMUL, **{**mm, "out_stride": 2 * L + 1,
                              "out_base": d["cmem_depth"] - 4 * L - 1},
                dst=Dst.CMEM, flags=Flag.MAXC), E.CMEM_RANGE),    # column N past CMEM
        (encode(Op.SOFTMAX, flags=Flag.MAXC, **{**row, "a_base": d["cmem_depth"] - 8}),
         E.CMEM_RANGE),                               # column k of the last row past CMEM
        (encode(Op.LAYERNORM, flags=Flag.RES, **{**row, "k": 8, "p_base": d["pbuf_depth"] - 3}),
         E.PBUF_RANGE),                               # G, B and the residual's m / sh
        (encode(Op.LAYERNORM, flags=Flag.RES, **row, b_base=d["amem_depth"] - 5,
                ext_addr=2 << 8), E.AMEM_RANGE),      # x rows (stride ext_addr[23:8])
    ]


def test_new_error_codes_bounded():
    """Every check docs/isa_transformer.md adds raises its code, by the bad instruction, within
    a bounded number of cycles, and the accelerator restarts cleanly; a SOFTMAX ignores PBUF."""
    P, L = 2, 4
    d = dict(SMALL, cmem_depth=512, pbuf_depth=16, imem_depth=8)
    cases = _new_error_programs(P, L, d)
    nop, halt = encode(Op.NOP), encode(Op.HALT)
    progs = [([nop, ins, halt], 3) for ins, _ in cases]
    ok = encode(Op.SOFTMAX, rows=1, k=1, dst=Dst.AMEM, p_base=0xFFFF, imm=1)
    progs.append(([nop, ok, halt], 3))
    res = _run_many(progs, pes=P, lanes=L, bound=400, **d)
    for (ins, code), (status, pc, cycles, waited) in zip(cases, res):
        assert (status >> 8) & 0xFF == code and status & 4, (code, hex(ins), status)
        assert pc == 1 and waited < 80 and cycles < 60, (code, pc, waited, cycles)
    status, pc, cycles, waited = res[-1]
    assert status == 2 and pc == 2, (status, pc)


def test_load_lag():
    """A MATMUL and a SOFTMAX with load lag 1 start while the last load before them (an
    unrelated LOAD_B) still runs; with lag 0 they wait for it. Same results, fewer cycles."""
    P, L = 2, 4
    rng = np.random.default_rng(75)
    M, K, N, k = 4, 40, 8, 6
    A = rng.integers(-128, 128, (M, K))
    B = rng.integers(-128, 128, (K, N))
    S = rng.integers(-500, 500, (M, L * tiles(k, L)))
    c_e, sh_e = softmax_constants(1e-2)
    junk = list(range(400))
    results = []
    for lag in (0, 1):
        pg = Program(L)
        pg(Op.LOAD_A, ext_addr=pg.put(a_words(A, L)), rows=M, k=K, a_base=0, a_stride=K)
        pg(Op.LOAD_B, ext_addr=pg.put(b_words(B, L)), count=tiles(N, L) * K, b_base=0)
        pg(Op.LOAD_C, ext_addr=pg.put(c_words(S, L)), rows=M, tiles=tiles(k, L), out_base=100,
           out_stride=8)
        pg(Op.LOAD_B, ext_addr=pg.put(junk), count=len(junk), b_base=500)
        pg(Op.MATMUL, rows=M, k=K, tiles=tiles(N, L), a_base=0, a_stride=K, b_base=0,
           dst=Dst.CMEM, out_base=0, out_stride=N, ext_addr=lag)
        pg(Op.SOFTMAX, flags=Flag.NORM, rows=M, k=k, a_base=100, a_stride=8, dst=Dst.CMEM,
           out_base=200, out_stride=8, imm=c_e | sh_e << 16, ext_addr=lag)
        o1, o2 = pg.reserve(M * tiles(N, L) * 4), pg.reserve(M * tiles(k, L) * 4)
        pg(Op.STORE_C, ext_addr=o1, rows=M, tiles=tiles(N, L), out_base=0, out_stride=N)
        pg(Op.STORE_C, ext_addr=o2, rows=M, tiles=tiles(k, L), out_base=200, out_stride=8)
        pg(Op.HALT)
        r = pg.run(pes=P)
        assert r["halted"], r["code"]
        np.testing.assert_array_equal(c_from_words(r["mem"], M, tiles(N, L), L, o1), A @ B)
        np.testing.assert_array_equal(c_from_words(r["mem"], M, tiles(k, L), L, o2)[:, :k],
                                      softmax(S[:, :k], c_e, sh_e))
        results.append(r)
    # With lag 1 the MATMUL (2·2·40 beats) and the SOFTMAX hide behind the 400-word load.
    assert results[1]["cycles"] + 200 < results[0]["cycles"], [r["cycles"] for r in results]
    assert results[1]["stall_dma"] < results[0]["stall_dma"]


def test_maxc_softmax_and_layernorm_res():
    """MATMUL MAXC (row maxima into CMEM column N: K = L, so the next row pass waits for the
    maximum's write, and K = 9; N not a multiple of L, an all-negative row whose padding
    columns must not count, rows not a multiple of P), back to back; SOFTMAX MAXC on the first
    (no maximum pass); LAYERNORM RES writing its output over its x rows (as KWT's LN1), the
    residual sums in place in CMEM; P = 3, L = 4, bit-exact with ``sim.golden``."""
    P, L = 3, 4
    rng = np.random.default_rng(79)
    M, d, N = 7, 4, 9
    T = tiles(N, L)
    Q = rng.integers(-128, 128, (M, d))
    KT = rng.integers(-128, 128, (d, N))
    S = matmul(Q, KT)
    M2, K2, N2 = 5, 9, 6
    T2 = tiles(N2, L)
    A2 = rng.integers(-128, 128, (M2, K2))
    A2[1] = rng.integers(1, 128, K2)
    B2 = -rng.integers(1, 129, (K2, N2))                  # row 1: every product < 0
    S2 = matmul(A2, B2)
    assert (S2[1] < 0).all()
    c_e, sh_e = softmax_constants(1e-3)
    D = 6
    TD = tiles(D, L)
    H = rng.integers(-30000, 30000, (M, D))
    H[0, :2] = (-(1 << 31), (1 << 31) - 1)
    X = rng.integers(-128, 128, (M, D))
    m_x, sh_x = rng.integers(1, 1 << 15, D), rng.integers(3, 14, D)
    lc = layernorm_constants(rng.normal(1, 0.3, D), rng.normal(0, 0.3, D), 1e-3, 0.01, 1e-5)

    pg = Program(L)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(Q, L)), rows=M, k=d, a_base=0, a_stride=d)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(A2, L)), rows=M2, k=K2, a_base=40, a_stride=K2)
    pg(Op.LOAD_A, ext_addr=pg.put(a_words(X, L)), rows=M, k=D, a_base=100, a_stride=D)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(KT, L)), count=T * d, b_base=0)
    pg(Op.LOAD_B, ext_addr=pg.put(b_words(B2, L)), count=T2 * K2, b_base=50)
    pg(Op.LOAD_C, ext_addr=pg.put(c_words(H, L)), rows=M, tiles=TD, out_base=400,
       out_stride=TD * L)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(lc["B"], lc["G"], np.full(D, lc["sh_o"]), L)),
       count=TD, p_base=0)
    pg(Op.LOAD_P, ext_addr=pg.put(p_words(np.zeros(D, int), m_x, sh_x, L)), count=TD,
       p_base=TD)
    pg(Op.MATMUL, rows=M, k=d, tiles=T, count=N, a_base=0, a_stride=d, b_base=0,
       dst=Dst.CMEM, flags=Flag.MAXC, out_base=0, out_stride=N + 1)
    pg(Op.MATMUL, rows=M2, k=K2, tiles=T2, count=N2, a_base=40, a_stride=K2, b_base=50,
       dst=Dst.CMEM, flags=Flag.MAXC, out_base=200, out_stride=N2 + 1)
    pg(Op.SOFTMAX, flags=Flag.MAXC, rows=M, k=N, a_base=0, a_stride=N + 1, dst=Dst.AMEM,
       out_base=300, out_stride=N, imm=c_e | sh_e << 16)
    pg(Op.LAYERNORM, flags=Flag.RES, rows=M, k=D, a_base=400, a_stride=TD * L, b_base=100,
       ext_addr=D << 8, dst=Dst.AMEM, sat=Sat.INT9, out_base=100, out_stride=D, p_base=0,
       imm=lc["r_d"], count=lc["E"] & 0xFFFFFFFF, tiles=lc["E"] >> 32)
    outs = {}
    for name, rows, base, stride, Tn in (("s", M, 0, N + 1, T), ("s2", M2, 200, N2 + 1, T2),
                                         ("h", M, 400, TD * L, TD)):
        outs[name] = pg.reserve(rows * Tn * 4)
        pg(Op.STORE_C, ext_addr=outs[name], rows=rows, tiles=Tn, out_base=base,
           out_stride=stride)
    outs["w"], Tw = observe(pg, rows=M, n=N, a_base=300, a_stride=N, b_base=100, out_base=600)
    outs["y"], Ty = observe(pg, rows=M, n=D, a_base=100, a_stride=D, b_base=200, out_base=800)
    pg(Op.HALT)
    r = pg.run(pes=P, imem_depth=32)
    assert r["halted"], r["code"]

    def got(name, rows, n, Tn):
        return c_from_words(r["mem"], rows, Tn, L, outs[name])[:, :n]
    s = got("s", M, N + 1, T)
    np.testing.assert_array_equal(s[:, :N], S)
    np.testing.assert_array_equal(s[:, N], S.max(axis=1))
    s2 = got("s2", M2, N2 + 1, T2)
    np.testing.assert_array_equal(s2[:, :N2], S2)
    np.testing.assert_array_equal(s2[:, N2], S2.max(axis=1))
    np.testing.assert_array_equal(got("w", M, N, Tw), exp_weights(S, c_e, sh_e))
    hs = add(H, X, m_x, sh_x, *INT16)
    np.testing.assert_array_equal(got("h", M, D, TD), hs)
    np.testing.assert_array_equal(
        got("y", M, D, Ty), layernorm(hs, lc["r_d"], lc["E"], lc["G"], lc["B"], lc["sh_o"],
                                      *INT9))
