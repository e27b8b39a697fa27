"""The int8 KWT model the accelerator runs, and its file format (docs/model_format.md).

A model file is one ``.npz``: a JSON string under ``meta`` (format tag, version, config, the float
scales of every tensor for dequantization) and integer arrays under flat keys (``embed.w``,
``layers.3.wqkv``, ...). :func:`load_qmodel` validates everything and raises
:class:`sim.errors.ModelError` with the reason; :func:`save_qmodel` writes the file whole or not
at all.
"""
import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = ["QLayer", "QKwt", "save_qmodel", "load_qmodel", "FORMAT", "VERSION"]

FORMAT = "kwt-accel-int8"
VERSION = 1


@dataclass
class QLayer:
    """Integer parameters of one post-norm encoder layer (names as in docs/numerics.md §14)."""
    wqkv: np.ndarray      # (3·dim, dim) int8, [out, in]; Wq pre-scaled by 1/√d
    m_qkv: np.ndarray     # (3·dim,) requant multipliers to int8 q | k | v
    sh_qkv: np.ndarray
    c_e: int              # softmax exponent constant
    sh_e: int
    m_a: np.ndarray       # (dim,) normalized p·v → int8 attention output, per column
    sh_a: np.ndarray
    wo: np.ndarray        # (dim, dim) int8
    bo: np.ndarray        # (dim,) int32
    m_o: np.ndarray       # (dim,) → int16 at the residual scale
    sh_o: np.ndarray
    m_r1: np.ndarray      # (dim,) residual: x (int8, per-column scale) → the int16 residual scale
    sh_r1: np.ndarray
    ln1: dict             # layernorm constants: r_d, E, G, B, sh_o
    w1: np.ndarray        # (mlp, dim) int8
    b1: np.ndarray        # (mlp,) int32
    m_1: np.ndarray       # → int8 GELU input
    sh_1: np.ndarray
    gelu: np.ndarray      # (256,) int9 table
    w2: np.ndarray        # (dim, mlp) int8
    b2: np.ndarray
    m_2: np.ndarray       # → int16 at the second residual scale
    sh_2: np.ndarray
    m_r2: np.ndarray
    sh_r2: np.ndarray
    ln2: dict
    # Linear attention (docs/numerics.md §14) instead of softmax: q and k requantized to int8,
    # φ = elu + 1 by the tables ``phi_q``, ``phi_k``; then c_e, sh_e, m_a, sh_a are unused.
    linear: bool = False
    phi_q: np.ndarray = None  # (256,) uint8-valued tables
    phi_k: np.ndarray = None
    m_t: np.ndarray = None    # (heads·(d+1),) φkᵀ·[v | 1] → int8, per head and column
    sh_t: np.ndarray = None
    m_l: np.ndarray = None    # (dim,) quotient → int9 attention output
    sh_l: np.ndarray = None


_LINEAR_FIELDS = ("phi_q", "phi_k", "m_t", "sh_t", "m_l", "sh_l")


@dataclass
class QKwt:
    """The whole int8 KWT: embedding, layers, head, plus float scales for (de)quantization."""
    config: dict                      # dim, mlp_dim, heads, num_layers, tokens, classes, labels
    s_in: np.ndarray                  # (40,) per-MFCC-coefficient input scales
    embed_w: np.ndarray               # (dim, 40) int8
    embed_c0: np.ndarray              # (tokens, dim) int32: bias + positional embedding (+ class token)
    embed_m: np.ndarray               # (dim,)
    embed_sh: np.ndarray
    layers: list
    head_w: np.ndarray                # (classes, dim) int8
    head_b: np.ndarray                # (classes,) int32
    head_m: np.ndarray
    head_sh: np.ndarray
    scales: dict = field(default_factory=dict)   # float scale of every named tensor

    def quantize_input(self, mfcc):
        """Host side: float MFCC (..., 98, 40) → int9 (an A operand) with the per-coefficient scales."""
        from .golden.fixed import round_half_up
        mfcc = np.asarray(mfcc, dtype=np.float64)
        if mfcc.shape[-2:] != (self.config["tokens"] - 1, self.s_in.shape[0]):
            raise ValueError(f"MFCC must be (..., {self.config['tokens'] - 1}, {self.s_in.shape[0]}), got {mfcc.shape}")
        if not np.all(np.isfinite(mfcc)):
            raise ValueError("MFCC contains NaN or infinity")
        return np.clip(round_half_up(mfcc / self.s_in), -256, 255)


_LAYER_SCALARS = {"c_e", "sh_e"}
_LN_KEYS = ("r_d", "E", "G", "B", "sh_o")
# (key, dtype kind, lo, hi) checks for arrays that feed fixed-width hardware fields.
_RANGES = {
    "wqkv": (-128, 127), "wo": (-128, 127), "w1": (-128, 127), "w2": (-128, 127),
    "bo": (-(1 << 31), (1 << 31) - 1), "b1": (-(1 << 31), (1 << 31) - 1), "b2": (-(1 << 31), (1 << 31) - 1),
    "gelu": (-256, 255), "phi_q": (0, 255), "phi_k": (0, 255), "linear": (0, 1),
    **{m: (0, 32767) for m in ("m_qkv", "m_a", "m_o", "m_r1", "m_1", "m_2", "m_r2", "m", "m_t",
                               "m_l")},
    **{sh: (0, 47) for sh in ("sh_qkv", "sh_a", "sh_o", "sh_r1", "sh_1", "sh_2", "sh_r2", "sh",
                              "sh_t", "sh_l")},
}


def _flatten(model):
    arrays = {"s_in": model.s_in}
    for name in ("embed_w", "embed_c0", "embed_m", "embed_sh", "head_w", "head_b", "head_m", "head_sh"):
        arrays[name.replace("_", ".", 1)] = getattr(model, name)
    for i, layer in enumerate(model.layers):
        for f in fields(QLayer):
            val = getattr(layer, f.name)
            if f.name in ("ln1", "ln2"):
                for k in _LN_KEYS:
                    arrays[f"layers.{i}.{f.name}.{k}"] = np.asarray(val[k])
            elif f.name == "linear":
                if val:                   # softmax layers keep the version-1 keys only
                    arrays[f"layers.{i}.linear"] = np.asarray(1)
            elif f.name in _LINEAR_FIELDS:
                if layer.linear:
                    arrays[f"layers.{i}.{f.name}"] = np.asarray(val)
            else:
                arrays[f"layers.{i}.{f.name}"] = np.asarray(val)
    return {k: np.asarray(v, dtype=np.float64) if k == "s_in" else _narrow(np.asarray(v, dtype=np.int64))
            for k, v in arrays.items()}


def _narrow(a):
    """The smallest signed integer dtype that holds ``a`` (keeps the file small)."""
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(dt)
    return a


def save_qmodel(model, path):
    """Write ``model`` to ``path`` (an ``.npz``) atomically: whole file or nothing."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, "config": model.config, "scales": model.scales}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **_flatten(model))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _need(arrays, key, shape=None):
    if key not in arrays:
        raise ModelError(f"model file lacks array {key!r}")
    a = arrays[key]
    if shape is not None and a.shape != tuple(shape):
        raise ModelError(f"model array {key!r} has shape {a.shape}, expected {tuple(shape)}")
    leaf = key.rsplit(".", 1)[-1]
    if leaf in _RANGES and a.size:
        lo, hi = _RANGES[leaf]
        if a.min() < lo or a.max() > hi:
            raise ModelError(f"model array {key!r} has values outside [{lo}, {hi}]")
    return a


def load_qmodel(path):
    """Read and validate a model file; raise :class:`ModelError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise ModelError(f"model file {path} is not an .npz model (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] if k == "meta" else z[k].astype(np.float64 if k == "s_in" else np.int64)
                      for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelError(f"model file {path} is not a readable .npz ({e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelError(f"model file {path} has no valid 'meta' record ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ModelError(f"model file {path} is format {meta.get('format')!r} v{meta.get('version')}, "
                         f"expected {FORMAT!r} v{VERSION}")
    try:
        cfg = meta["config"]
        dim, mlp, nl, tok, ncls = (int(cfg[k]) for k in ("dim", "mlp_dim", "num_layers", "tokens", "classes"))
        heads = int(cfg["heads"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"model file {path} has an incomplete config ({e})") from None
    nin = arrays.get("s_in", np.zeros(0)).shape[0]
    layers = []
    for i in range(nl):
        p = f"layers.{i}."
        kw = {}
        linear = p + "linear" in arrays and bool(_need(arrays, p + "linear", ()))
        for f in fields(QLayer):
            if f.name == "linear":
                kw["linear"] = linear
                continue
            if f.name in _LINEAR_FIELDS and not linear:
                continue
            if f.name in ("ln1", "ln2"):
                kw[f.name] = {k: _need(arrays, f"{p}{f.name}.{k}") for k in _LN_KEYS}
                for k in ("r_d", "E", "sh_o"):
                    kw[f.name][k] = int(kw[f.name][k])
            elif f.name in _LAYER_SCALARS:
                kw[f.name] = int(_need(arrays, p + f.name, ()))
            else:
                kw[f.name] = _need(arrays, p + f.name)
        shapes = {"wqkv": (3 * dim, dim), "wo": (dim, dim), "w1": (mlp, dim), "w2": (dim, mlp), "gelu": (256,),
                  "m_qkv": (3 * dim,), "sh_qkv": (3 * dim,), "m_a": (dim,), "sh_a": (dim,), "bo": (dim,),
                  "m_o": (dim,), "sh_o": (dim,), "m_r1": (dim,), "sh_r1": (dim,), "b1": (mlp,), "m_1": (mlp,),
                  "sh_1": (mlp,), "b2": (dim,), "m_2": (dim,), "sh_2": (dim,), "m_r2": (dim,), "sh_r2": (dim,)}
        if linear:
            d1 = heads * (dim // heads + 1) if heads >= 1 and dim % heads == 0 else -1
            shapes.update(phi_q=(256,), phi_k=(256,), m_t=(d1,), sh_t=(d1,), m_l=(dim,), sh_l=(dim,))
        for k, shp in shapes.items():
            if kw[k].shape != shp:
                raise ModelError(f"model array {p + k!r} has shape {kw[k].shape}, expected {shp}")
        layers.append(QLayer(**kw))
    model = QKwt(
        config=cfg, s_in=_need(arrays, "s_in", (nin,)),
        embed_w=_need(arrays, "embed.w", (dim, nin)), embed_c0=_need(arrays, "embed.c0", (tok, dim)),
        embed_m=_need(arrays, "embed.m", (dim,)), embed_sh=_need(arrays, "embed.sh", (dim,)),
        layers=layers,
        head_w=_need(arrays, "head.w", (ncls, dim)), head_b=_need(arrays, "head.b", (ncls,)),
        head_m=_need(arrays, "head.m", (ncls,)), head_sh=_need(arrays, "head.sh", (ncls,)),
        scales=meta.get("scales", {}))
    if heads < 1 or dim % heads:
        raise ModelError(f"model config: dim {dim} is not divisible by {heads} heads")
    if not np.all(np.isfinite(model.s_in)) or np.any(model.s_in <= 0):
        raise ModelError("model input scales must be finite and positive")
    return model
