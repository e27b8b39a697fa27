"""Single transformer operations on float inputs: quantize (with the helpers of
:mod:`sim.quantize`, calibrated on the input itself), compile (:mod:`sim.compiler`), and say
what the golden model gives, so that a backend's result can be checked bit for bit and
dequantized. Used by ``python -m sim.run {softmax,layernorm,attention,linear_attention,mhsa,ffn,encoder}``.

Inputs (float arrays under these npz keys; weights are ``[out, in]`` as in
:class:`sim.kwt_float.LayerWeights`; optional keys have the default shown):

=========  ==================================================================================
op         keys
=========  ==================================================================================
softmax    ``x`` (M × n) scores; ``scale`` = 1 (the scores are ``scale·x``)
layernorm  ``x`` (M × D); ``gamma``, ``beta`` (D); ``eps`` = 1e-6
attention  ``q``, ``k`` (N × d), ``v`` (N × dv); ``scale`` = 1/√d
linear_attention  ``q``, ``k`` (N × d), ``v`` (N × dv): φ(q)(φ(k)ᵀv) / φ(q)Σφ(k), φ = elu + 1
mhsa       ``x`` (N × D); ``wq``, ``wk``, ``wv``, ``wo`` (D × D); ``bo`` (D) = 0; ``heads`` = 1;
           ``scale`` = 1/√(D/heads); ``linear`` = 0 (1: linear attention instead of softmax)
ffn        ``x`` (N × D); ``w1`` (F × D), ``b1`` (F) = 0, ``w2`` (D × F), ``b2`` (D) = 0
encoder    as mhsa (``linear`` too), plus ``gamma1``, ``beta1``, ``w1``, ``b1``, ``w2``, ``b2``, ``gamma2``,
           ``beta2``, ``eps`` = 1e-6 (post-norm, as KWT)
=========  ==================================================================================

Every output is ``y`` (float64, dequantized), ``y_int`` (the integers the accelerator
produced), ``scale`` (per output column, ``y = y_int·scale``) and ``reference`` (the float64
result of the same operation, for the quantization error).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compiler import (attention_job, encoder_job, ffn_job, layernorm_job,
                       linear_attention_job, make_config, mhsa_job, softmax_job)
from .errors import InputError
from .golden import (attention, elu1_lut, encoder_layer, ffn, layernorm, layernorm_constants,
                     linear_attention, linear_mha, matmul, mha, requant, softmax,
                     softmax_constants)
from .golden.fixed import INT8, INT9, INT16, INT32, round_half_up
from .golden.requant import encode_multiplier
from .kwt_float import (LayerWeights, _layer_norm, _softmax, elu1, gelu_tanh, layer_forward,
                        linear_attention_float)
from .quantize import (_col8, _qk_balance, _scale8, _scale16, quantize_attention, quantize_ffn,
                       quantize_layer, quantize_linear_attention, update_amax)

__all__ = ["OPS", "OP_KEYS", "PreparedOp", "prepare", "mhsa_reference"]

OP_KEYS = {
    "softmax": (("x",), ("scale",)),
    "layernorm": (("x", "gamma", "beta"), ("eps",)),
    "attention": (("q", "k", "v"), ("scale",)),
    "linear_attention": (("q", "k", "v"), ()),
    "mhsa": (("x", "wq", "wk", "wv", "wo"), ("bo", "heads", "scale", "linear")),
    "ffn": (("x", "w1", "w2"), ("b1", "b2")),
    "encoder": (("x", "wq", "wk", "wv", "wo", "gamma1", "beta1", "w1", "w2", "gamma2", "beta2"),
                ("bo", "b1", "b2", "heads", "scale", "eps", "linear")),
}
OPS = tuple(OP_KEYS)
SCORE_BITS = 24          # standalone softmax: max |score| ↦ 2²⁴ (int32 with headroom)


@dataclass
class PreparedOp:
    """A compiled operation with what it should produce."""
    op: str
    job: object                    # sim.compiler.CompiledJob
    golden: np.ndarray             # the golden model's integer result
    scale: np.ndarray              # per output column: y = y_int · scale
    reference: np.ndarray          # float64 result of the operation
    info: dict = field(default_factory=dict)

    def dequantize(self, y_int):
        return np.asarray(y_int, dtype=np.float64) * self.scale


def _q(x, s, lo, hi):
    return np.clip(round_half_up(np.asarray(x, dtype=np.float64) / s), lo, hi)


def _float(arrays, key, shape=None, ndim=None, default=None):
    if key not in arrays:
        if default is not None:
            return np.broadcast_to(np.asarray(default, dtype=np.float64), shape).copy()
        raise InputError(f"the inputs lack {key!r}")
    a = np.asarray(arrays[key])
    if a.dtype.kind not in "fiub":
        raise InputError(f"{key}: dtype {a.dtype} is not numeric")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{key} contains NaN or infinity")
    if ndim is not None and a.ndim != ndim:
        raise InputError(f"{key} must have {ndim} dimension(s), got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise InputError(f"{key} must have shape {tuple(shape)}, got {a.shape}")
    if a.size == 0:
        raise InputError(f"{key} is empty (shape {a.shape})")
    return a


def _scalar(arrays, key, default, kind=float, lo=None):
    if key not in arrays:
        return default
    a = np.asarray(arrays[key])
    if a.size != 1:
        raise InputError(f"{key} must be a scalar, got shape {a.shape}")
    v = a.reshape(())[()]
    if kind is int:
        if float(v) != int(v):
            raise InputError(f"{key} must be an integer, got {v}")
        v = int(v)
    else:
        v = float(v)
        if not np.isfinite(v):
            raise InputError(f"{key} must be finite")
    if lo is not None and v < lo:
        raise InputError(f"{key} must be at least {lo}, got {v}")
    return v


def _check_keys(op, arrays):
    need, opt = OP_KEYS[op]
    extra = sorted(set(arrays) - set(need) - set(opt))
    if extra:
        raise InputError(f"{op}: unknown input key(s) {', '.join(extra)}; expected "
                         f"{', '.join(need)} (optional: {', '.join(opt) or 'none'})")


def _amax(trace):
    return update_amax({}, trace)


def _x8(x):
    """int8 per-column input (the ext format of LOAD_A) and its scales."""
    s = _col8(np.abs(x).max(axis=0))
    return _q(x, s[None, :], *INT8), s


# --------------------------------------------------------------------------------------------

def mhsa_reference(x, p, heads):
    """The golden multi-head self-attention with projections, as the first lines of
    :func:`sim.golden.encoder_layer`: ``requant(mha(q, k, v)·Woᵀ + bo) → int16``."""
    dim = x.shape[-1]
    acc = matmul(x, np.asarray(p.wqkv).T)
    linear = getattr(p, "linear", False)
    q = requant(acc[..., :dim], p.m_qkv[:dim], p.sh_qkv[:dim], *(INT8 if linear else INT9))
    kv = requant(acc[..., dim:], p.m_qkv[dim:], p.sh_qkv[dim:], *INT8)
    if linear:
        a = linear_mha(q, kv[..., :dim], kv[..., dim:], heads, p.phi_q, p.phi_k, p.m_t, p.sh_t,
                       p.m_l, p.sh_l)
    else:
        a = mha(q, kv[..., :dim], kv[..., dim:], heads, p.c_e, p.sh_e, p.m_a, p.sh_a)
    return requant(matmul(a, np.asarray(p.wo).T, p.bo), p.m_o, p.sh_o, *INT16)


class _Fields:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _softmax_op(arrays, cfg):
    x = _float(arrays, "x", ndim=2)
    scale = _scalar(arrays, "scale", 1.0)
    z = x * scale
    s_s = max(float(np.abs(z).max()), 1e-30) / (1 << SCORE_BITS)
    s = np.clip(round_half_up(z / s_s), *INT32)
    c_e, sh_e = softmax_constants(s_s)
    gold = softmax(s, c_e, sh_e)
    job = softmax_job(s, c_e, sh_e, config=cfg)
    return job, gold, np.full(x.shape[1], 1 / 256), _softmax(z), dict(c_e=c_e, sh_e=sh_e)


def _layernorm_op(arrays, cfg):
    x = _float(arrays, "x", ndim=2)
    D = x.shape[1]
    gamma = _float(arrays, "gamma", shape=(D,))
    beta = _float(arrays, "beta", shape=(D,))
    eps = _scalar(arrays, "eps", 1e-6, lo=0.0)
    ref = _layer_norm(x, gamma, beta, eps)
    s_h = _scale16(np.abs(x).max(axis=0))
    h = _q(x, s_h, *INT16)
    s_out = _col8(np.abs(ref).max(axis=0), 255.0)
    ln = layernorm_constants(gamma, beta, s_h, s_out, eps)
    gold = layernorm(h, **ln, lo=INT9[0], hi=INT9[1])
    return layernorm_job(h, ln, config=cfg), gold, s_out, ref, dict(s_h=s_h)


def _float_head(arrays):
    """Float q, k (N × d) and v (N × dv) of one attention head, checked."""
    q = _float(arrays, "q", ndim=2)
    k = _float(arrays, "k", shape=q.shape)
    v = _float(arrays, "v", ndim=2)
    if v.shape[0] != q.shape[0]:
        raise InputError(f"v has {v.shape[0]} rows, q and k have {q.shape[0]}")
    return q, k, v


def _attention_op(arrays, cfg):
    q, k, v = _float_head(arrays)
    scale = _scalar(arrays, "scale", q.shape[1] ** -0.5)
    ref = _softmax(q @ k.T * scale) @ v
    alpha = _qk_balance(np.abs(q).max(axis=0), np.abs(k).max(axis=0))   # q·kᵀ = (qα)(k/α)ᵀ
    qa, ka = q * alpha, k / alpha
    s_q, s_k = _scale8(np.abs(qa).max(axis=0)), _scale8(np.abs(ka).max(axis=0))
    s_v = _col8(np.abs(v).max(axis=0))
    q8, k8, v8 = _q(qa, s_q, *INT8), _q(ka, s_k, *INT8), _q(v, s_v, *INT8)
    c_e, sh_e = softmax_constants(s_q * s_k * scale)
    s_a = _col8(np.abs(ref).max(axis=0), 255.0)
    m_a, sh_a = encode_multiplier(s_v / 256.0 / s_a)
    gold = attention(q8, k8, v8, c_e, sh_e, m_a, sh_a)
    job = attention_job(q8, k8, v8, c_e, sh_e, m_a, sh_a, config=cfg)
    return job, gold, s_a, ref, {}


def _linear_attention_op(arrays, cfg):
    q, k, v = _float_head(arrays)
    tr = {}
    ref = linear_attention_float(q, k, v, tr.__setitem__)
    s_q, s_k = _scale8(np.abs(q).max()), _scale8(np.abs(k).max())
    s_v = _col8(np.abs(v).max(axis=0))
    q8, k8, v8 = _q(q, s_q, *INT8), _q(k, s_k, *INT8), _q(v, s_v, *INT8)
    s_phq = max(float(tr["phq"].max()), 1e-12) / 255.0
    s_phk = max(float(tr["phk"].max()), 1e-12) / 255.0
    lut_q, lut_k = elu1_lut(s_q, s_phq), elu1_lut(s_k, s_phk)
    s_t = _col8(np.abs(tr["lt"]).max(axis=0))
    m_t, sh_t = encode_multiplier(s_phk * np.append(s_v, 1.0) / s_t)
    s_a = _col8(np.abs(ref).max(axis=0), 255.0)
    m_l, sh_l = encode_multiplier(s_t[:-1] / s_t[-1] / s_a / 65536.0)
    gold = linear_attention(q8, k8, v8, lut_q, lut_k, m_t, sh_t, m_l, sh_l)
    job = linear_attention_job(q8, k8, v8, lut_q, lut_k, m_t, sh_t, m_l, sh_l, config=cfg)
    return job, gold, s_a, ref, dict(s_q=s_q, s_k=s_k)


def _layer_weights(arrays, D, *, full):
    linear = bool(_scalar(arrays, "linear", 0, kind=int, lo=0))
    w = {k: _float(arrays, k, shape=(D, D)) for k in ("wq", "wk", "wv", "wo")}
    w["bo"] = _float(arrays, "bo", shape=(D,), default=0.0)
    if full:
        for k in ("gamma1", "beta1", "gamma2", "beta2"):
            w[k] = _float(arrays, k, shape=(D,))
        w1 = _float(arrays, "w1", ndim=2)
        F = w1.shape[0]
        if w1.shape[1] != D:
            raise InputError(f"w1 must be (F, {D}), got {w1.shape}")
        return LayerWeights(wq=w["wq"], wk=w["wk"], wv=w["wv"], wo=w["wo"], bo=w["bo"],
                            ln1_g=w["gamma1"], ln1_b=w["beta1"], w1=w1,
                            b1=_float(arrays, "b1", shape=(F,), default=0.0),
                            w2=_float(arrays, "w2", shape=(D, F)),
                            b2=_float(arrays, "b2", shape=(D,), default=0.0),
                            ln2_g=w["gamma2"], ln2_b=w["beta2"], linear=linear)
    # attention only: the FFN and LayerNorms of the float block run on dummies and are ignored
    return LayerWeights(wq=w["wq"], wk=w["wk"], wv=w["wv"], wo=w["wo"], bo=w["bo"],
                        ln1_g=np.ones(D), ln1_b=np.zeros(D), w1=np.zeros((1, D)),
                        b1=np.zeros(1), w2=np.zeros((D, 1)), b2=np.zeros(D),
                        ln2_g=np.ones(D), ln2_b=np.zeros(D), linear=linear)


def _heads(arrays, D):
    heads = _scalar(arrays, "heads", 1, kind=int, lo=1)
    if D % heads:
        raise InputError(f"dim {D} cannot be split into {heads} heads")
    return heads


def _block_float(lw, x, heads, scale, eps):
    trace = {}
    layer_forward(lw, x[None], heads, scale, eps, trace.__setitem__)
    trace = {k: v[0] for k, v in trace.items()}
    trace["x"] = x
    return trace


def _mhsa_op(arrays, cfg):
    x = _float(arrays, "x", ndim=2)
    D = x.shape[1]
    heads = _heads(arrays, D)
    scale = _scalar(arrays, "scale", (D // heads) ** -0.5)
    lw = _layer_weights(arrays, D, full=False)
    tr = _block_float(lw, x, heads, scale, 1e-6)
    amax = _amax(tr)
    x8, s_x = _x8(x)
    s_o = _scale16(amax["o"])
    if lw.linear:
        fields, _ = quantize_linear_attention(lw, amax, "", s_x, attn_scale=scale, s_o=s_o,
                                              heads=heads)
    else:
        fields, _ = quantize_attention(lw, amax, "", s_x, attn_scale=scale, s_o=s_o)
    p = _Fields(**fields)
    gold = mhsa_reference(x8, p, heads)
    return mhsa_job(x8, p, heads, config=cfg), gold, np.full(D, s_o), tr["o"], dict(heads=heads)


def _ffn_op(arrays, cfg):
    x = _float(arrays, "x", ndim=2)
    D = x.shape[1]
    w1 = _float(arrays, "w1", ndim=2)
    F = w1.shape[0]
    if w1.shape[1] != D:
        raise InputError(f"w1 must be (F, {D}), got {w1.shape}")
    lw = _Fields(w1=w1, b1=_float(arrays, "b1", shape=(F,), default=0.0),
                 w2=_float(arrays, "w2", shape=(D, F)),
                 b2=_float(arrays, "b2", shape=(D,), default=0.0))
    ff1 = x @ lw.w1.T + lw.b1
    g = gelu_tanh(ff1)
    ref = g @ lw.w2.T + lw.b2
    amax = _amax({"ff1": ff1, "gelu": g, "ff2": ref})
    x8, s_x = _x8(x)
    s_out = _scale16(amax["ff2"])
    fields, _ = quantize_ffn(lw, amax, "", s_x, s_out=s_out)
    p = _Fields(**fields)
    gold = ffn(x8, p.w1, p.b1, p.m_1, p.sh_1, p.gelu, p.w2, p.b2, p.m_2, p.sh_2, INT16)
    return ffn_job(x8, p, config=cfg), gold, np.full(D, s_out), ref, dict(mlp=F)


def _encoder_op(arrays, cfg):
    x = _float(arrays, "x", ndim=2)
    D = x.shape[1]
    heads = _heads(arrays, D)
    scale = _scalar(arrays, "scale", (D // heads) ** -0.5)
    eps = _scalar(arrays, "eps", 1e-6, lo=0.0)
    lw = _layer_weights(arrays, D, full=True)
    tr = _block_float(lw, x, heads, scale, eps)
    amax = _amax(tr)
    x8, s_x = _x8(x)
    layer, _, s_x2 = quantize_layer(lw, amax, "", s_x, attn_scale=scale, eps=eps, heads=heads)
    gold = encoder_layer(x8, layer, heads)
    return (encoder_job(x8, layer, heads, config=cfg), gold, np.asarray(s_x2), tr["x2"],
            dict(heads=heads, mlp=lw.w1.shape[0]))


_PREPARE = {"softmax": _softmax_op, "layernorm": _layernorm_op, "attention": _attention_op,
            "linear_attention": _linear_attention_op, "mhsa": _mhsa_op, "ffn": _ffn_op, "encoder": _encoder_op}


def prepare(op, arrays, *, config=None, pes=None, lanes=None):
    """Quantize the float ``arrays`` (a dict or an open npz) for ``op``, compile the program
    and compute the golden result: a :class:`PreparedOp`."""
    if op not in _PREPARE:
        raise InputError(f"unknown operation {op!r}; available: {', '.join(OPS)}")
    cfg = make_config(config, pes, lanes)
    arrays = {k: arrays[k] for k in arrays}
    _check_keys(op, arrays)
    job, gold, scale, ref, info = _PREPARE[op](arrays, cfg)
    return PreparedOp(op, job, np.asarray(gold, dtype=np.int64),
                      np.asarray(scale, dtype=np.float64), np.asarray(ref), info)


# --------------------------------------------------------------------------------------------
# Command line (``python -m sim.run OP``; the parser lives in sim/run.py)

OP_HELP = {
    "softmax": "row softmax of float scores x (SOFTMAX, normalized)",
    "layernorm": "LayerNorm of float rows x with gamma, beta",
    "attention": "one attention head softmax(q·kᵀ·scale)·v",
    "linear_attention": "one linear-attention head φ(q)(φ(k)ᵀv) / φ(q)Σφ(k), φ = elu + 1",
    "mhsa": "multi-head self-attention with projections (x, wq, wk, wv, wo, bo, heads)",
    "ffn": "feed-forward block GELU(x·W1ᵀ + b1)·W2ᵀ + b2",
    "encoder": "one post-norm encoder layer (KWT)",
}


def inputs_help(op):
    need, opt = OP_KEYS[op]
    return (f"npz with float arrays {', '.join(need)}"
            + (f" (optional: {', '.join(opt)})" if opt else "") + "; see docs/compiler.md")


def load_inputs(path):
    """The arrays of an ``.npz`` as a dict; a clear :class:`InputError` naming the file."""
    import zipfile
    from pathlib import Path
    p = Path(path)
    if not p.exists():
        raise InputError(f"--inputs: {p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise InputError(f"--inputs: {p}: not an .npz archive")
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"--inputs: {p}: not a readable .npz ({e})") from None


def cmd_op(args, config, backend):
    """Quantize, compile, run on ``backend`` (None: the interpreter), check against the golden
    model, write ``--out`` (and ``--stats``) atomically. Returns the stats dict."""
    import io
    import json

    from .compiler import run_compiled, section_cycles
    from .run import write_outputs
    if not args.out.endswith(".npz"):
        raise InputError(f"--out {args.out}: the output must be a .npz file")
    prep = prepare(args.cmd, load_inputs(args.inputs), config=config)
    job = prep.job
    y_int, counters, wall = run_compiled(job, backend or "interp")
    y = prep.dequantize(y_int)
    ref = prep.reference
    exact = bool(np.array_equal(y_int, prep.golden))
    denom = float((ref ** 2).mean())
    rel = float(np.sqrt(((y - ref) ** 2).mean() / denom)) if denom > 0 else None
    cycles = int(counters["CYCLES"])
    P, L = config.pes, config.lanes
    hw = backend is not None
    stats = {
        "op": args.cmd, "backend": args.backend, "pes": P, "lanes": L,
        "shape": list(y_int.shape), "cycles": cycles, "mac_ops": int(job.mac_ops),
        "utilization": job.mac_ops / (cycles * P * L) if cycles else None,
        "mac_cycles": int(counters["MAC_CYCLES"]),
        "counters": {k: int(v) for k, v in counters.items()},
        "cycles_source": "hardware CYCLES counter" if hw else "cost model",
        "section_cycles": section_cycles(job)[0], "instructions": job.prog_len,
        "bit_exact_vs_golden": exact, "rel_rms_vs_float": rel, "wall_s": round(wall, 6),
        "quantization": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                         for k, v in prep.info.items()},
        "config": {k: getattr(config, k) for k in ("amem_depth", "cmem_depth", "bbuf_depth",
                                                  "pbuf_depth", "imem_depth", "mem_latency")},
    }
    buf = io.BytesIO()
    np.savez(buf, y=y, y_int=y_int, scale=prep.scale, reference=ref)
    files = {args.out: buf.getvalue()}
    if args.stats:
        files[args.stats] = (json.dumps(stats, indent=1) + "\n").encode()
    write_outputs(files)
    if not args.quiet:
        print(f"{args.cmd} {'×'.join(map(str, y_int.shape))} on {args.backend} P={P} L={L}: "
              f"{cycles} cycles, utilization {100 * (stats['utilization'] or 0):.1f} %"
              + (" (cost model)" if not hw else "")
              + f"; bit-exact with the golden model: {'yes' if exact else 'NO'}"
              + (f"; rel. RMS vs float {rel:.4f}" if rel is not None else ""))
    return stats
