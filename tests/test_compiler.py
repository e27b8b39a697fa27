"""sim/compiler.py: the whole KWT and single operations compiled to one program each, run on the
functional ISA interpreter, bit-exact with the golden model; the allocation, the load lags and
the resource errors (fixed seeds)."""
import numpy as np
import pytest

from sim.compiler import (Builder, check_program, compile_kwt, input_parts, section_cycles,
                          split_input)
from sim.errors import InputError
from sim.golden import kwt
from hw.isa import Op
from sim.kws import DEFAULT_MODEL
from sim.kwt_float import KwtFloatWeights, LayerWeights
from sim.mfcc import mfcc
from sim.ops import OPS, prepare
from sim.paths import shipped_clips_dir
from sim.program import AccelConfig, accesses, interpret
from sim.qmodel import load_qmodel
from sim.quantize import calibrate, quantize_kwt
from sim.wav import list_dataset, read_wav


def run(job, order="program"):
    ext, counters = interpret(job.image, job.prog_base, job.prog_len, job.config,
                              load_order=order)
    return job.read(ext), counters


def random_float_kwt(dim, heads, mlp, layers, seed):
    rng = np.random.default_rng(seed)

    def n(*shape, s=1.0):
        return rng.normal(0, s, shape)
    lw = [LayerWeights(wq=n(dim, dim, s=dim ** -0.5), wk=n(dim, dim, s=dim ** -0.5),
                       wv=n(dim, dim, s=dim ** -0.5), wo=n(dim, dim, s=dim ** -0.5),
                       bo=n(dim, s=0.1), ln1_g=1 + n(dim, s=0.1), ln1_b=n(dim, s=0.1),
                       w1=n(mlp, dim, s=dim ** -0.5), b1=n(mlp, s=0.1),
                       w2=n(dim, mlp, s=mlp ** -0.5), b2=n(dim, s=0.1), ln2_g=1 + n(dim, s=0.1),
                       ln2_b=n(dim, s=0.1)) for _ in range(layers)]
    return KwtFloatWeights(in_w=n(dim, 40, s=0.05), in_b=n(dim, s=0.1), cls=n(dim),
                           pos=n(99, dim, s=0.5), layers=lw, head_w=n(12, dim, s=dim ** -0.5),
                           head_b=n(12, s=0.1), dim=dim, mlp_dim=mlp, heads=heads,
                           num_layers=layers, attn_scale=(dim // heads) ** -0.5)


_MODELS = {}


def random_model(dim, heads, mlp, layers=2, tokens=99, seed=0):
    """A quantized random KWT and one int9 input; ``tokens`` < 99 keeps the first tokens (the
    integer model works for any token count)."""
    key = (dim, heads, mlp, layers, seed)
    if key not in _MODELS:
        w = random_float_kwt(dim, heads, mlp, layers, seed)
        rng = np.random.default_rng(seed + 1)
        feats = rng.normal(0, 1, (4, 98, 40)) * np.linspace(20, 1, 40)
        _MODELS[key] = (quantize_kwt(w, calibrate(w, [feats])), feats[0])
    m, f = _MODELS[key]
    x = m.quantize_input(f)
    if tokens != 99:
        m = type(m)(**{**m.__dict__, "embed_c0": m.embed_c0[:tokens],
                       "config": {**m.config, "tokens": tokens}})
        x = x[:tokens - 1]
    return m, x


@pytest.fixture(scope="module")
def kwt1_clip():
    model = load_qmodel(DEFAULT_MODEL)
    path, _ = list_dataset(shipped_clips_dir())[4]
    return model, model.quantize_input(mfcc(read_wav(path)))


# ---- the whole model

@pytest.mark.parametrize("amem", [4096, 8192])
def test_kwt1_real_clip_bit_exact(kwt1_clip, amem):
    """KWT-1 on a real clip at P = 8, L = 16 (AMEM 4096: the FFN in two column chunks; 8192:
    one): the logits equal sim.golden.kwt; the program fits IMEM 256, needs no SYNC, and its
    load lags cover every dependency (late loads give the same logits)."""
    model, x = kwt1_clip
    cfg = AccelConfig(pes=8, lanes=16, amem_depth=amem)
    job = compile_kwt(model, x, config=cfg)
    logits, counters = run(job)
    np.testing.assert_array_equal(logits[0], kwt(model, x))
    assert job.prog_len <= 256 and job.info["syncs_inserted"] == 0
    assert len(job.info["layout"]["ffn_chunks"]) == (2 if amem == 4096 else 1)
    assert check_program(job.program, cfg) == []
    np.testing.assert_array_equal(run(job, "late")[0], logits)
    # input: int9 → int8 parts; the MFCC of real speech needs 2 or 3
    assert job.info["input_parts"] == input_parts(x) >= 2
    # per-section cycles add up to the cost model's total
    sec, total = section_cycles(job)
    assert list(sec) == ["embed"] + [f"layer{i}" for i in range(12)] + ["head"]
    assert sum(sec.values()) == total["CYCLES"] == counters["CYCLES"]
    assert sec["layer11"] < sec["layer10"] / 3            # the last layer runs one query row
    util = job.mac_ops / (counters["CYCLES"] * 8 * 16)
    assert 0.6 < util < 1


def test_kwt1_all_rows_and_new_input(kwt1_clip):
    """``last_rows1=False`` runs the last layer on every token (same logits); ``with_input``
    swaps the clip without recompiling."""
    model, x = kwt1_clip
    cfg = AccelConfig(pes=8, lanes=16)
    full = compile_kwt(model, x, config=cfg, last_rows1=False, parts=3)
    np.testing.assert_array_equal(run(full)[0][0], kwt(model, x))
    x2 = np.clip(x[::-1] // 2 + 7, -256, 255)
    a = np.concatenate([np.zeros((1, 120), np.int64), split_input(x2, 3)])
    from sim.program import a_words
    job2 = full.with_input("input", a_words(a, 16))
    np.testing.assert_array_equal(run(job2)[0][0], kwt(model, x2))


@pytest.mark.parametrize("P, L, tokens, depths", [
    (1, 4, 20, {}), (1, 16, 99, dict(amem_depth=32768, cmem_depth=16384)),
    (3, 4, 99, dict(amem_depth=8192, cmem_depth=8192)), (3, 16, 37, {}),
    (8, 4, 99, {}), (8, 16, 99, {}), (8, 16, 9, {}),
])
def test_random_small_kwt(P, L, tokens, depths):
    """dim 32, 2 heads, MLP 64, 2 layers: bit-exact with the golden model at several P, L."""
    model, x = random_model(32, 2, 64, tokens=tokens)
    cfg = AccelConfig(pes=P, lanes=L, **depths)
    job = compile_kwt(model, x, config=cfg)
    np.testing.assert_array_equal(run(job)[0][0], kwt(model, x))
    assert check_program(job.program, cfg) == []
    np.testing.assert_array_equal(run(job, "late")[0][0], kwt(model, x))


@pytest.mark.parametrize("dim, heads", [(128, 2), (192, 3)])
def test_multihead_kwt2_kwt3_shapes(dim, heads):
    """KWT-2/3 shapes (head dim 64, MLP 4·dim), 2 layers, on the hardware's default depths
    (AMEM 8192): weights wider than half the BBUF ring are split into column groups, the FFN
    into column chunks."""
    model, x = random_model(dim, heads, 4 * dim, seed=dim)
    cfg = AccelConfig(pes=8, lanes=16, amem_depth=8192)
    job = compile_kwt(model, x, config=cfg)
    np.testing.assert_array_equal(run(job)[0][0], kwt(model, x))
    assert check_program(job.program, cfg) == [] and job.info["syncs_inserted"] == 0


def test_split_input():
    x = np.array([[-256, -129, -128, 0, 127, 128, 254, 255]])
    for p in (3,):
        parts = split_input(x, p)
        assert parts.min() >= -128 and parts.max() <= 127
        np.testing.assert_array_equal(parts.reshape(1, p, -1).sum(axis=1), x)
    assert input_parts(x) == 3 and input_parts(x[:, :-1]) == 2 and input_parts(x[:, 2:5]) == 1
    with pytest.raises(InputError):
        split_input(x, 2)


# ---- single operations

def op_inputs(rng):
    N, D, F = 23, 32, 64

    def w(*s, sc=1.0):
        return rng.normal(0, sc, s)
    att = dict(wq=w(D, D, sc=D ** -.5), wk=w(D, D, sc=D ** -.5), wv=w(D, D, sc=D ** -.5),
               wo=w(D, D, sc=D ** -.5), bo=w(D, sc=.1), heads=2)
    ff = dict(w1=w(F, D, sc=D ** -.5), b1=w(F, sc=.1), w2=w(D, F, sc=F ** -.5), b2=w(D, sc=.1))
    return {
        "softmax": dict(x=w(13, 37, sc=3)),
        "layernorm": dict(x=w(13, 40, sc=2) + 1, gamma=1 + w(40, sc=.1), beta=w(40, sc=.1)),
        "attention": dict(q=w(N, 16), k=w(N, 16), v=w(N, 8)),
        "linear_attention": dict(q=w(N, 16), k=w(N, 16), v=w(N, 8)),
        "mhsa": dict(x=w(N, D), **att),
        "mhsa_linear": dict(x=w(N, D), **att, linear=1),
        "ffn": dict(x=w(N, D), **ff),
        "encoder": dict(x=w(N, D), **att, **ff, gamma1=1 + w(D, sc=.1), beta1=w(D, sc=.1),
                        gamma2=1 + w(D, sc=.1), beta2=w(D, sc=.1)),
        "encoder_linear": dict(x=w(N, D), **att, **ff, gamma1=1 + w(D, sc=.1),
                               beta1=w(D, sc=.1), gamma2=1 + w(D, sc=.1), beta2=w(D, sc=.1),
                               linear=1),
    }


@pytest.mark.parametrize("P, L", [(1, 4), (3, 8), (8, 16)])
def test_single_operations_bit_exact(P, L):
    cfg = AccelConfig(pes=P, lanes=L)
    for name, arrays in op_inputs(np.random.default_rng(P)).items():
        op = name.removesuffix("_linear")
        pr = prepare(op, arrays, config=cfg)
        y, _ = run(pr.job)
        np.testing.assert_array_equal(y, pr.golden, err_msg=name)
        assert check_program(pr.job.program, cfg) == [], name
        # dequantized close to the float operation
        ref = pr.reference
        err = np.sqrt(((pr.dequantize(y) - ref) ** 2).mean() / (ref ** 2).mean())
        assert err < 0.05, (name, err)
    assert set(OPS) == {n.removesuffix("_linear") for n in op_inputs(np.random.default_rng(0))}


def test_ffn_chunks_and_weight_groups():
    """A small AMEM forces FFN column chunks (W2 accumulates in CMEM); a small BBUF splits the
    weights into column groups — the result stays bit-exact."""
    rng = np.random.default_rng(5)
    arr = op_inputs(rng)["ffn"]
    for depths in (dict(amem_depth=256), dict(bbuf_depth=64), dict(pbuf_depth=4)):
        cfg = AccelConfig(pes=8, lanes=4, **depths)
        pr = prepare("ffn", arr, config=cfg)
        np.testing.assert_array_equal(run(pr.job)[0], pr.golden)
        assert check_program(pr.job.program, cfg) == []
    assert len(prepare("ffn", arr, config=AccelConfig(pes=8, lanes=4, amem_depth=256))
               .job.info["layout"]["ffn_chunks"]) > 1


# ---- allocation, ordering and errors

def test_prefetch_overlaps_compute(kwt1_clip):
    """Weight loads are issued behind earlier compute (not just before their first user), and
    the MATMULs that do not need a pending load do not wait for it (lag > 0)."""
    model, x = kwt1_clip
    job = compile_kwt(model, x, config=AccelConfig(pes=8, lanes=16))
    instrs = job.program.instrs
    cfg = job.config
    compute = (Op.MATMUL, Op.SOFTMAX, Op.LAYERNORM, Op.RADD)
    ahead = []
    for pc, i in enumerate(instrs):
        if i["op"] not in (Op.LOAD_B, Op.LOAD_P, Op.LOAD_T):
            continue
        span = accesses(i, cfg)[0]
        user = next(q for q in range(pc + 1, len(instrs)) if instrs[q]["op"] in compute
                    and any(a[0] == span[0] and a[1] < span[2] and span[1] < a[2]
                            for a in accesses(instrs[q], cfg)))
        ahead.append(sum(1 for q in range(pc + 1, user) if instrs[q]["op"] in compute))
    # every weight load but the very first ones is issued at least one compute instruction
    # before its first user
    assert sum(1 for a in ahead if a >= 1) >= len(ahead) - 3
    lags = [i["ext_addr"] & 0xFF for i in instrs if i["op"] == Op.MATMUL]
    assert sum(1 for lag in lags if lag > 0) >= 0.9 * len(lags)
    _, counters = run(job)
    assert counters["STALL_DMA"] < 0.01 * counters["CYCLES"]


def test_program_start_waits_only_for_the_first_part(kwt1_clip, monkeypatch):
    """At the start nothing hides the loads: the first MATMUL (the embedding's first 32 token
    rows) waits only for those rows' input and C₀, its own weights and parameters; the other
    rows load right after it, ahead of the prefetch; the split saves cost-model cycles."""
    import sim.compiler as compiler
    model, x = kwt1_clip
    cfg = AccelConfig(pes=8, lanes=16)
    job = compile_kwt(model, x, config=cfg)
    instrs = job.program.instrs
    mm = [pc for pc, i in enumerate(instrs) if i["op"] == Op.MATMUL]
    first, second = (instrs[pc] for pc in mm[:2])
    assert compiler.embed_split(99, 8) == 32
    assert (first["rows"], second["rows"]) == (32, 67)
    assert second["a_base"] == first["a_base"] + 4 * first["a_stride"]
    assert second["out_base"] == first["out_base"] + 4 * first["out_stride"]
    before = {Op(i["op"]).name: i for i in instrs[:mm[0]]}
    assert sorted(before) == ["LOAD_A", "LOAD_B", "LOAD_C", "LOAD_P"]
    assert before["LOAD_A"]["rows"] == before["LOAD_C"]["rows"] == 32
    k, tiles = first["k"], first["tiles"]
    assert before["LOAD_B"]["count"] == k * tiles and before["LOAD_P"]["count"] == tiles
    after = [Op(i["op"]).name for i in instrs[mm[0] + 1:mm[0] + 3]]
    assert after == ["LOAD_A", "LOAD_C"]
    assert [instrs[mm[0] + 1 + j]["rows"] for j in range(2)] == [67, 67]
    cycles = run(job)[1]["CYCLES"]
    monkeypatch.setattr(compiler, "EMBED_SPLIT", 0)      # one embedding MATMUL
    whole = compile_kwt(model, x, config=cfg)
    assert sum(1 for i in whole.program.instrs if i["op"] == Op.MATMUL) == len(mm) - 1
    np.testing.assert_array_equal(run(whole)[0], run(job)[0])
    assert cycles < run(whole)[1]["CYCLES"] - 1000


def test_late_input_rows_are_checked():
    b = Builder(AccelConfig(pes=4, lanes=4))
    with pytest.raises(ValueError, match="multiple of P"):
        b.input_a("x", np.zeros((10, 4), np.int64), 0, 4, late=(6, 0))
    with pytest.raises(ValueError, match="multiple of P"):
        b.input_c("c", np.zeros((10, 4), np.int64), 0, 4, late=(0, 0))
    b.input_a("x", np.zeros((10, 4), np.int64), 0, 4, late=(8, 3))    # no operation 3
    with pytest.raises(ValueError, match="after operation 3"):
        b.build(shape=(1, 1))


def test_check_program_finds_hazards(kwt1_clip):
    """Corrupt a compiled program: a lag that skips a needed load, a load moved before the
    last user of its ring space — both reported; the late-load interpreter shows the first."""
    model, x = random_model(32, 2, 64, tokens=20)
    cfg = AccelConfig(pes=3, lanes=4)
    job = compile_kwt(model, x, config=cfg)
    prog = job.program
    # the first MATMUL that waits for a load: give it lag 255
    pc = next(pc for pc, i in enumerate(prog.instrs)
              if i["op"] == Op.MATMUL and (i["ext_addr"] & 0xFF) < 255 and pc > 4)
    bad = type(prog)([dict(i) for i in prog.instrs])
    bad.instrs[pc]["ext_addr"] = 255
    assert any(p == pc for p, _ in check_program(bad, cfg))
    # a prefetch LOAD_B moved up, before the MATMUL that still reads the old ring contents
    lb = next(pc for pc, i in enumerate(prog.instrs) if i["op"] == Op.LOAD_B and pc > 10)
    moved = type(prog)([dict(i) for i in prog.instrs])
    ins = moved.instrs.pop(lb)
    users = [q for q in range(lb) if moved.instrs[q]["op"] == Op.MATMUL]
    moved.instrs.insert(users[-2], ins)
    assert check_program(moved, cfg)


@pytest.mark.parametrize("depths, message", [
    (dict(amem_depth=1024), "AMEM needs"),
    (dict(cmem_depth=1024), "CMEM needs"),
    (dict(bbuf_depth=512), "BBUF"),
    (dict(imem_depth=128), "--imem-depth 256"),
])
def test_resource_errors_are_clear(kwt1_clip, depths, message):
    model, x = kwt1_clip
    with pytest.raises(InputError, match=message):
        compile_kwt(model, x, config=AccelConfig(pes=8, lanes=16, **depths))


def test_operation_errors():
    with pytest.raises(InputError, match="row unit"):
        prepare("softmax", dict(x=np.ones((2, 2000))), pes=2, lanes=4)
    with pytest.raises(InputError, match="heads"):
        prepare("mhsa", dict(x=np.ones((4, 6)), wq=np.eye(6), wk=np.eye(6), wv=np.eye(6),
                             wo=np.eye(6), heads=4), pes=2, lanes=4)
    with pytest.raises(InputError, match="unknown input"):
        prepare("layernorm", dict(x=np.ones((2, 4)), gamma=np.ones(4), beta=np.ones(4),
                                  bogus=1), pes=2, lanes=4)
    with pytest.raises(InputError, match="lack 'beta'"):
        prepare("layernorm", dict(x=np.ones((2, 4)), gamma=np.ones(4)), pes=2, lanes=4)
    with pytest.raises(InputError, match="NaN"):
        prepare("ffn", dict(x=np.full((2, 4), np.nan), w1=np.ones((8, 4)), w2=np.ones((4, 8))),
                pes=2, lanes=4)
    with pytest.raises(InputError, match="PBUF"):
        b = Builder(AccelConfig(pes=1, lanes=4, pbuf_depth=1))
        b.op("matmul", p=b.p_item("p", 0, 1, 0, 8), rows=1, k=1, tiles=2)
        b.build(shape=(1, 1))
