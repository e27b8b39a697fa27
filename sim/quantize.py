"""Post-training quantization of a float KWT into the int8 model the accelerator runs.

Scales follow docs/numerics.md §2: weights per output channel (max |w| / 127); activations from
the maximum |x| seen on calibration clips (int8 sites: max/127; int16 residual sites and logits:
2·max/32767, since 16 bits leave room for headroom). Where a per-column activation scale costs
nothing in hardware it is used: the MFCC input and the residual stream x (folded into the next
matmul's weights; the residual add and LayerNorm constants are per column anyway), V and the
attention output (folded into the per-column requantization and into Wo).
"""
import numpy as np

from .golden import elu1_lut, gelu_lut, layernorm_constants, softmax_constants
from .golden.fixed import INT32, round_half_up
from .golden.requant import encode_multiplier
from .kwt_float import KwtFloatWeights, kwt_forward
from .qmodel import QKwt, QLayer

__all__ = ["calibrate", "update_amax", "quantize_kwt", "with_linear_layers", "quantize_layer", "quantize_attention",
           "quantize_linear_attention", "quantize_ffn"]

INT16_HEADROOM = 2.0


def calibrate(weights, mfcc_batches):
    """Per-column maximum |x| of every traced float intermediate (and of the MFCC input) over an
    iterable of MFCC batches; ``amax[k].max()`` is the per-tensor maximum."""
    amax = {}
    for mfcc in mfcc_batches:
        trace = {}
        kwt_forward(weights, mfcc, trace)
        trace["mfcc"] = mfcc
        update_amax(amax, trace)
    if not amax:
        raise ValueError("calibration needs at least one MFCC batch")
    return amax


def update_amax(amax, trace):
    """Fold a trace (name → float array) into the per-column maxima ``amax`` (in place)."""
    for k, v in trace.items():
        v = np.abs(np.asarray(v, dtype=np.float64))
        m = v.reshape(-1, v.shape[-1]).max(axis=0)
        amax[k] = np.maximum(amax[k], m) if k in amax else m
    return amax


def _w8(w):
    """Per-output-channel symmetric int8: (w8, s_w)."""
    s = np.abs(w).max(axis=1) / 127.0
    s = np.where(s > 0, s, 1.0)
    return np.clip(round_half_up(w / s[:, None]), -127, 127), s


def _bias32(b, s_acc):
    return np.clip(round_half_up(b / s_acc), *INT32)


def _scale8(a, qmax=127.0):
    """Per-tensor scale from a per-column maximum (int8; ``qmax=255`` for int9)."""
    return max(float(np.max(a)), 1e-12) / qmax


def _col8(a, qmax=127.0):
    """Per-column scales; a column never seen nonzero gets the tensor's scale."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, max(float(a.max()), 1e-12)) / qmax


def _qk_balance(amax_q, amax_k):
    """Per-column α with q·kᵀ = (q·α)(k/α)ᵀ that equalizes the columns' ranges (exact in float;
    both sides are quantized per tensor, so balanced columns lose less)."""
    a = np.sqrt(np.maximum(amax_k, 1e-12) / np.maximum(amax_q, 1e-12))
    return a / np.exp(np.mean(np.log(a)))


def _scale16(*a):
    return INT16_HEADROOM * max(max(float(np.max(x)) for x in a), 1e-12) / 32767.0


def quantize_attention(lw, amax, p, s_x, *, attn_scale, s_o):
    """The attention block of a layer: q, k, v projections, attention and Wo (requantized to
    int16 at ``s_o``), for an input with per-column scale ``s_x``. ``lw`` has wq, wk, wv, wo, bo
    (float, [out, in]); ``amax`` the calibration maxima under the prefix ``p``. Returns the
    :class:`QLayer` fields and the scales."""
    dim = lw.wq.shape[0]
    # q and k are reduced against each other in q·kᵀ: per-tensor; v per column.
    # q (an A operand) is int9, k and v (B operands) int8; α balances q against k per column.
    alpha = _qk_balance(amax[p + "q"], amax[p + "k"])
    s_q, s_k = _scale8(amax[p + "q"] * alpha, 255.0), _scale8(amax[p + "k"] / alpha)
    s_v = _col8(amax[p + "v"])
    # The input's per-column scale folds into the weights' input columns (exact).
    wq = lw.wq * attn_scale * alpha[:, None]
    wqkv8, s_wqkv = _w8(np.concatenate([wq, lw.wk / alpha[:, None], lw.wv]) * s_x[None, :])
    s_out = np.concatenate([np.full(dim, s_q), np.full(dim, s_k), s_v])
    m_qkv, sh_qkv = encode_multiplier(s_wqkv / s_out)
    c_e, sh_e = softmax_constants(s_q * s_k)
    s_a = _col8(amax[p + "attn"], 255.0)
    m_a, sh_a = encode_multiplier(s_v / 256.0 / s_a)
    wo8, s_wo = _w8(lw.wo * s_a[None, :])
    bo = _bias32(lw.bo, s_wo)
    m_o, sh_o = encode_multiplier(s_wo / s_o)
    fields = dict(wqkv=wqkv8, m_qkv=m_qkv, sh_qkv=sh_qkv, c_e=c_e, sh_e=sh_e, m_a=m_a, sh_a=sh_a,
                  wo=wo8, bo=bo, m_o=m_o, sh_o=sh_o)
    return fields, {p + "q": s_q, p + "k": s_k, p + "v": s_v.tolist(), p + "attn": s_a.tolist()}


def quantize_linear_attention(lw, amax, p, s_x, *, attn_scale, s_o, heads):
    """The attention block of a linear-attention layer (``lw.linear``): q, k int8 per tensor
    (each with its φ table), v per column; φ = elu + 1 into uint8;
    T = φkᵀ·[v | 1] to int8 per head and column; the quotient to the int9 attention output
    (docs/numerics.md §14). Returns the :class:`QLayer` fields and the scales."""
    dim = lw.wq.shape[0]
    d = dim // heads
    s_q, s_k = _scale8(amax[p + "q"]), _scale8(amax[p + "k"])
    s_v = _col8(amax[p + "v"])
    s_phq = max(float(np.max(amax[p + "phq"])), 1e-12) / 255.0
    s_phk = max(float(np.max(amax[p + "phk"])), 1e-12) / 255.0
    phi_q, phi_k = elu1_lut(s_q, s_phq), elu1_lut(s_k, s_phk)
    wqkv8, s_wqkv = _w8(np.concatenate([lw.wq * attn_scale, lw.wk, lw.wv]) * s_x[None, :])
    s_out = np.concatenate([np.full(dim, s_q), np.full(dim, s_k), s_v])
    m_qkv, sh_qkv = encode_multiplier(s_wqkv / s_out)
    s_t = _col8(amax[p + "lt"])                       # heads·(d+1) columns
    s_vx = np.concatenate([np.append(s_v[h * d:(h + 1) * d], 1.0) for h in range(heads)])
    m_t, sh_t = encode_multiplier(s_phk * s_vx / s_t)
    s_a = _col8(amax[p + "attn"], 255.0)
    # out = (U_c / U_den)·s_t[c] / s_t[den]; the hardware's quotient carries 2^16.
    s_tc = np.concatenate([s_t[h * (d + 1):h * (d + 1) + d] for h in range(heads)])
    s_td = np.repeat(s_t[d::d + 1], d)
    m_l, sh_l = encode_multiplier(s_tc / s_td / s_a / 65536.0)
    wo8, s_wo = _w8(lw.wo * s_a[None, :])
    bo = _bias32(lw.bo, s_wo)
    m_o, sh_o = encode_multiplier(s_wo / s_o)
    zeros = np.zeros(dim, dtype=np.int64)
    fields = dict(wqkv=wqkv8, m_qkv=m_qkv, sh_qkv=sh_qkv, c_e=0, sh_e=0, m_a=zeros, sh_a=zeros,
                  wo=wo8, bo=bo, m_o=m_o, sh_o=sh_o, linear=True, phi_q=phi_q, phi_k=phi_k, m_t=m_t, sh_t=sh_t,
                  m_l=m_l, sh_l=sh_l)
    return fields, {p + "q": s_q, p + "k": s_k, p + "v": s_v.tolist(), p + "phq": s_phq,
                    p + "phk": s_phk,
                    p + "lt": s_t.tolist(), p + "attn": s_a.tolist()}


def quantize_ffn(lw, amax, p, s_x1, *, s_out):
    """The feed-forward block: W1 + bias → int8 → GELU table (int9) → W2 + bias → int16 at
    ``s_out``, for an input with per-column scale ``s_x1``; ``lw`` has w1, b1, w2, b2."""
    s_f = _scale8(amax[p + "ff1"])
    w18, s_w1 = _w8(lw.w1 * s_x1[None, :])
    b1 = _bias32(lw.b1, s_w1)
    m_1, sh_1 = encode_multiplier(s_w1 / s_f)
    s_g = max(float(np.max(amax[p + "gelu"])), 1e-12) / 255.0
    lut = gelu_lut(s_f, s_g)
    w28, s_w2 = _w8(lw.w2)
    b2 = _bias32(lw.b2, s_g * s_w2)
    m_2, sh_2 = encode_multiplier(s_g * s_w2 / s_out)
    fields = dict(w1=w18, b1=b1, m_1=m_1, sh_1=sh_1, gelu=lut, w2=w28, b2=b2, m_2=m_2, sh_2=sh_2)
    return fields, {p + "ff1": s_f, p + "gelu": s_g}


def quantize_layer(lw, amax, p, s_x, *, attn_scale, eps, heads=1):
    """One post-norm encoder layer (:class:`LayerWeights` ``lw``) whose input has per-column
    scale ``s_x``: returns ``(QLayer, scales, s_x2)`` (``s_x2``: the output's column scales)."""
    s_h1 = _scale16(amax[p + "h1"], amax[p + "o"])
    if getattr(lw, "linear", False):
        att, scales = quantize_linear_attention(lw, amax, p, s_x, attn_scale=attn_scale,
                                                s_o=s_h1, heads=heads)
    else:
        att, scales = quantize_attention(lw, amax, p, s_x, attn_scale=attn_scale, s_o=s_h1)
    m_r1, sh_r1 = encode_multiplier(s_x / s_h1)
    s_x1 = _col8(amax[p + "x1"], 255.0)
    ln1 = layernorm_constants(lw.ln1_g, lw.ln1_b, s_h1, s_x1, eps)
    s_h2 = _scale16(amax[p + "h2"], amax[p + "ff2"])
    ffn, sc = quantize_ffn(lw, amax, p, s_x1, s_out=s_h2)
    m_r2, sh_r2 = encode_multiplier(s_x1 / s_h2)
    s_x2 = _col8(amax[p + "x2"], 255.0)
    ln2 = layernorm_constants(lw.ln2_g, lw.ln2_b, s_h2, s_x2, eps)
    layer = QLayer(**att, m_r1=m_r1, sh_r1=sh_r1, ln1=ln1, **ffn, m_r2=m_r2, sh_r2=sh_r2, ln2=ln2)
    scales.update(sc)
    scales.update({p + "h1": s_h1, p + "x1": s_x1.tolist(), p + "h2": s_h2,
                   p + "x2": s_x2.tolist()})
    return layer, scales, s_x2


def quantize_kwt(weights: KwtFloatWeights, amax: dict, labels=None) -> QKwt:
    """Build the integer model from float ``weights`` and calibration maxima ``amax``."""
    dim, heads = weights.dim, weights.heads
    s_in = _col8(amax["mfcc"], 255.0)
    scales = {"s_in": s_in.tolist()}

    # Embedding: the per-coefficient input scales are folded into Wp (exact), then Wp is
    # quantized per output channel; bias, class token and positions share its accumulator scale.
    ew8, s_ew = _w8(weights.in_w * s_in[None, :])
    s_x = _col8(amax["x0"], 255.0)
    c0 = np.concatenate([(weights.cls + weights.pos[0])[None], weights.in_b[None] + weights.pos[1:]])
    embed_c0 = _bias32(c0, s_ew[None, :])
    embed_m, embed_sh = encode_multiplier(s_ew / s_x)
    scales["x0"] = s_x.tolist()

    layers = []
    for i, lw in enumerate(weights.layers):
        layer, sc, s_x = quantize_layer(lw, amax, f"l{i}.", s_x, attn_scale=weights.attn_scale,
                                        eps=weights.eps, heads=heads)
        layers.append(layer)
        scales.update(sc)

    hw8, s_hw = _w8(weights.head_w * s_x[None, :])
    s_logit = _scale16(amax["logits"])
    head_b = _bias32(weights.head_b, s_hw)
    head_m, head_sh = encode_multiplier(s_hw / s_logit)
    scales["logits"] = s_logit
    config = {"dim": dim, "mlp_dim": weights.mlp_dim, "heads": heads, "num_layers": weights.num_layers,
              "tokens": weights.pos.shape[0], "classes": weights.head_w.shape[0],
              "labels": list(labels) if labels is not None else None}
    return QKwt(config=config, s_in=s_in, embed_w=ew8, embed_c0=embed_c0, embed_m=embed_m,
                embed_sh=embed_sh, layers=layers, head_w=hw8, head_b=head_b, head_m=head_m,
                head_sh=head_sh, scales=scales)


def with_linear_layers(weights, layers):
    """``weights`` with linear attention in ``layers`` (indices, or a comma-separated string)."""
    import dataclasses

    from .errors import KwsError
    if isinstance(layers, str):
        try:
            layers = [int(t) for t in layers.split(",") if t.strip()]
        except ValueError:
            raise KwsError(f"--linear-layers: {layers!r} is not a comma-separated list of "
                           f"layer numbers") from None
    bad = [i for i in layers if not 0 <= i < weights.num_layers]
    if bad:
        raise KwsError(f"linear-attention layer(s) {bad} outside 0…{weights.num_layers - 1}")
    new = [dataclasses.replace(lw, linear=True) if i in layers else lw
           for i, lw in enumerate(weights.layers)]
    return dataclasses.replace(weights, layers=new)


def calibration_clips(directory, n, seed=0):
    """A deterministic, class-balanced choice of ``n`` clips of a speech_commands-like folder."""
    from .wav import list_dataset
    items = list_dataset(directory)
    rng = np.random.default_rng(seed)
    by_label = {}
    for path, label in items:
        by_label.setdefault(label, []).append(path)
    chosen = []
    for label in sorted(by_label):
        paths = by_label[label]
        k = min(len(paths), -(-n // len(by_label)))
        chosen += [(paths[i], label) for i in sorted(rng.choice(len(paths), k, replace=False))]
    return chosen[:n] if len(chosen) > n else chosen


def main(argv=None):
    import argparse

    from tqdm import tqdm

    from .errors import KwsError
    from .mfcc import mfcc
    from .paths import labels, speech_commands_dir
    from .qmodel import save_qmodel
    from .tflite_import import read_kwt_weights
    from .wav import read_wav

    ap = argparse.ArgumentParser(prog="python -m sim.quantize", description=(
        "Post-training int8 quantization of the float KWT-1 (TFLite release) into the model file "
        "the accelerator runs (docs/model_format.md)."))
    ap.add_argument("--tflite", default=None, help="float model (default: ../shared/models/kwt1/non_stream.tflite)")
    ap.add_argument("--calib-dir", default=None, help="speech_commands-like folder of calibration clips "
                    "(default: ../shared/data/speech_commands)")
    ap.add_argument("--calib-n", type=int, default=384, help="number of calibration clips, class-balanced (default 384)")
    ap.add_argument("--out", default="data/kwt1_int8.npz", help="output model file (default data/kwt1_int8.npz)")
    ap.add_argument("--linear-layers", default="", metavar="I,J,…",
                    help="layers that use linear attention φ(q)(φ(k)ᵀv) instead of softmax (the "
                         "trained weights are kept; accuracy changes)")
    args = ap.parse_args(argv)
    try:
        if args.calib_n < 1:
            raise KwsError("--calib-n must be at least 1")
        weights = read_kwt_weights(args.tflite)
        weights = with_linear_layers(weights, args.linear_layers)
        clips = calibration_clips(args.calib_dir or speech_commands_dir(), args.calib_n)
        feats = np.stack([mfcc(read_wav(p)) for p, _ in tqdm(clips, desc="calibration MFCC", unit="clip")])
        batches = [feats[i:i + 64] for i in range(0, len(feats), 64)]
        amax = calibrate(weights, tqdm(batches, desc="calibration", unit="batch"))
        model = quantize_kwt(weights, amax, labels())
        model.scales["calibration"] = sorted(f"{lab}/{p.name}" for p, lab in clips)
        print(save_qmodel(model, args.out))
    except (KwsError, OSError) as e:
        ap.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
