"""Read the KWT-1 TFLite model: its weights (into :class:`sim.kwt_float.KwtFloatWeights`) and
its outputs (through the TFLite interpreter), plus an ``.npz`` copy of the weights for tools
that run without the interpreter.

Tensors are found by the names the Keras-to-TFLite converter gave them and checked by shape:

- ``kws_transformer/dense/...``: input projection (kernel [dim, 40], bias);
- ``class_emb`` (1, 1, dim) and ``pos_emb`` (1, 99, dim);
- ``kws_transformer/transformer_block[_N]/``: block N, holding
  ``multi_head_self_attention[_M]/dense_K/...`` four [dim, dim] kernels (query, key, value,
  output, in increasing K, the order Keras created them; only the output one has a bias),
  ``sequential[_M]/dense_K/...`` the two feed-forward layers, and
  ``layer_normalization[_M]/{gamma,beta}`` the two LayerNorms in order;
- ``sequential_N/dense_K/...`` outside ``kws_transformer``: the classifier head [12, dim];
- scalars: the attention scale (``.../truediv``) and the LayerNorm epsilon
  (``.../batchnorm/add/y``); the feature normaliser (``speech_features/normalizer``) must be the
  identity.

The ``ai_edge_litert`` package is imported only by the functions that need the interpreter.
"""

import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from sim import paths
from sim.errors import ModelError
from sim.kwt_float import NUM_CLASSES, NUM_TOKENS, KwtFloatWeights, LayerWeights
from sim.mfcc import NUM_FRAMES, NUM_MFCC, check_audio

_BLOCK = r"^kws_transformer/transformer_block(?:_(?P<block>\d+))?/"
_ATTN_KERNEL = re.compile(_BLOCK + r"multi_head_self_attention(?:_\d+)?/dense_(?P<k>\d+)/Tensordot/MatMul$")
_ATTN_BIAS = re.compile(_BLOCK + r"multi_head_self_attention(?:_\d+)?/dense_(?P<k>\d+)/bias$")
_FFN_KERNEL = re.compile(_BLOCK + r"sequential(?:_\d+)?/dense_(?P<k>\d+)/Tensordot/MatMul$")
_FFN_BIAS = re.compile(_BLOCK + r"sequential(?:_\d+)?/dense_(?P<k>\d+)/bias$")
_FFN_TANH = re.compile(_BLOCK + r"sequential(?:_\d+)?/dense_(?P<k>\d+)/Tanh$")
_LN = re.compile(_BLOCK + r"layer_normalization(?:_(?P<k>\d+))?/(?P<what>gamma|beta)$")
_HEAD_KERNEL = re.compile(r"^sequential(?:_\d+)?/dense_\d+/MatMul$")
_HEAD_BIAS = re.compile(r"^sequential(?:_\d+)?/dense_\d+/bias$")
_ATTN_SCALE = re.compile(r"multi_head_self_attention(?:_\d+)?/truediv(?:;|$)")
_LN_EPS = re.compile(r"layer_normalization(?:_\d+)?/batchnorm/add/y$")
_NORM_SUB = re.compile(r"^speech_features/normalizer/sub/y$")
_NORM_SCALE = re.compile(r"^speech_features/normalizer/truediv(?:;|$)")
_MFCC_OUT = re.compile(r"^speech_features/dct/")

#: Version tag stored in the ``.npz`` files written by :func:`save_float_npz`.
NPZ_FORMAT = "kwt_float_v1"
_LAYER_KEYS = ("wq", "wk", "wv", "wo", "bo", "ln1_g", "ln1_b", "w1", "b1", "w2", "b2", "ln2_g", "ln2_b")
_TOP_KEYS = ("in_w", "in_b", "cls", "pos", "head_w", "head_b")
_CONFIG_KEYS = ("dim", "mlp_dim", "heads", "num_layers", "attn_scale", "eps")


def _interpreter(path: Path, preserve_all_tensors: bool = False):
    """Open and allocate a TFLite interpreter, turning every failure into a ModelError."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ImportError("the TFLite interpreter is missing: pip install ai-edge-litert") from exc
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist; expected the KWT-1 release's non_stream.tflite "
            "(the shared folder is found at <repo>/../shared or $KWS_SHARED)"
        )
    try:
        with warnings.catch_warnings():
            # Keeping all tensors is what we ask for when we read intermediates; no news.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=preserve_all_tensors)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path} is not a valid TFLite model ({exc})") from exc
    return interp


class _Tensors:
    """Name-indexed view of an interpreter's tensors with checked look-ups."""

    def __init__(self, path: Path, interp):
        self.path = path
        self.interp = interp
        self.details = interp.get_tensor_details()

    def find(self, pattern: re.Pattern) -> list[tuple[re.Match, dict]]:
        return [(m, t) for t in self.details if (m := pattern.search(t["name"]))]

    def value(self, detail: dict, shape: tuple[int, ...] | None = None) -> np.ndarray:
        try:
            v = self.interp.get_tensor(detail["index"])
        except ValueError as exc:
            raise ModelError(f"{self.path}: tensor {detail['name']!r} holds no data ({exc})") from exc
        if shape is not None and v.shape != shape:
            raise ModelError(f"{self.path}: tensor {detail['name']!r} has shape {v.shape}, expected {shape}")
        return v.astype(np.float64)

    def one(self, pattern: re.Pattern, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        hits = self.find(pattern)
        if len(hits) != 1:
            names = [t["name"] for _, t in hits]
            raise self.error(f"expected one tensor for {what}, found {len(hits)} {names}")
        return self.value(hits[0][1], shape)

    def constants(self, pattern: re.Pattern) -> list[np.ndarray]:
        """Values of the matching tensors of rank <= 1 (all activations of the model have rank >= 2)."""
        return [self.value(t) for _, t in self.find(pattern) if len(t["shape"]) <= 1]

    def scalar(self, pattern: re.Pattern, what: str) -> float:
        values = {float(v.reshape(-1)[0]) for v in self.constants(pattern) if v.size == 1}
        if len(values) != 1:
            raise self.error(f"expected one value for {what}, found {sorted(values)}")
        return values.pop()

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: {message}")


def _by_block(tensors: _Tensors, pattern: re.Pattern) -> dict[int, list[tuple[int, dict]]]:
    """Group matches by block index, each group sorted by the layer-name number ``k``."""
    groups: dict[int, list[tuple[int, dict]]] = {}
    for m, t in tensors.find(pattern):
        groups.setdefault(int(m["block"] or 0), []).append((int(m["k"] or 0), t))
    return {b: sorted(g, key=lambda kt: kt[0]) for b, g in groups.items()}


def _check_flags(path: Path, weights: KwtFloatWeights) -> None:
    """Cross-check the structure against the release's flags.json, when it sits beside the model."""
    flags_file = path.with_name("flags.json")
    if not flags_file.is_file():
        return
    try:
        flags = json.loads(flags_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{flags_file}: cannot read the training flags ({exc})") from exc
    found = {"d_model": weights.dim, "mlp_dim": weights.mlp_dim, "heads": weights.heads, "num_layers": weights.num_layers}
    for key, value in found.items():
        if key in flags and int(flags[key]) != value:
            raise ModelError(f"{path}: the model has {key} = {value}, but {flags_file} says {flags[key]}")


def read_kwt_weights(path: str | os.PathLike | None = None) -> KwtFloatWeights:
    """Read the weights of a KWT TFLite model.

    Parameters
    ----------
    path : str or path-like, optional
        The ``.tflite`` file; default :func:`sim.paths.kwt1_tflite`.

    Returns
    -------
    KwtFloatWeights
        float64 copies of the weights, kernels [out, in].

    Raises
    ------
    sim.errors.ModelError
        If the file is missing, is not a TFLite model, or does not have the expected KWT
        structure (the message names the tensor at fault).
    """
    path = Path(path) if path is not None else paths.kwt1_tflite()
    ts = _Tensors(path, _interpreter(path))

    in_w = ts.one(re.compile(r"^kws_transformer/dense/Tensordot/MatMul$"), "the input projection kernel")
    if in_w.ndim != 2 or in_w.shape[1] != NUM_MFCC:
        raise ts.error(f"input projection kernel has shape {in_w.shape}, expected (dim, {NUM_MFCC})")
    dim = in_w.shape[0]
    in_b = ts.one(re.compile(r"^kws_transformer/dense/bias$"), "the input projection bias", (dim,))
    cls = ts.one(re.compile(r"(?:^|/)class_emb$"), "the class token", (1, 1, dim)).reshape(dim)
    pos = ts.one(re.compile(r"(?:^|/)pos_emb$"), "the positional embedding", (1, NUM_TOKENS, dim))[0]
    head_w = ts.one(_HEAD_KERNEL, "the classifier kernel", (NUM_CLASSES, dim))
    head_b = ts.one(_HEAD_BIAS, "the classifier bias", (NUM_CLASSES,))

    # The front end ends with a (x - offset) * scale normaliser; the reference MFCC omits it.
    for pattern, identity in ((_NORM_SUB, 0.0), (_NORM_SCALE, 1.0)):
        if any(np.any(v != identity) for v in ts.constants(pattern)):
            raise ts.error("the MFCC normaliser is not the identity; only the identity is supported")

    attn_k, attn_b = _by_block(ts, _ATTN_KERNEL), _by_block(ts, _ATTN_BIAS)
    ffn_k, ffn_b = _by_block(ts, _FFN_KERNEL), _by_block(ts, _FFN_BIAS)
    ffn_tanh, ln = _by_block(ts, _FFN_TANH), _by_block(ts, _LN)
    num_layers = len(attn_k)
    if num_layers == 0 or sorted(attn_k) != list(range(num_layers)):
        raise ts.error(f"expected transformer blocks numbered 0..N-1, found {sorted(attn_k)}")

    layers = []
    mlp_dim = None
    for i in range(num_layers):
        where = f"transformer block {i}"
        kernels = attn_k[i]
        if len(kernels) != 4:
            raise ts.error(f"{where}: expected 4 attention kernels (q, k, v, output), found {len(kernels)}")
        wq, wk, wv, wo = (ts.value(t, (dim, dim)) for _, t in kernels)
        biases = attn_b.get(i, [])
        if [k for k, _ in biases] != [kernels[3][0]]:
            raise ts.error(f"{where}: expected a bias on the attention output projection only, found {len(biases)} biases")
        bo = ts.value(biases[0][1], (dim,))

        ff = ffn_k.get(i, [])
        if len(ff) != 2:
            raise ts.error(f"{where}: expected 2 feed-forward kernels, found {len(ff)}")
        w1 = ts.value(ff[0][1])
        if w1.ndim != 2 or w1.shape[1] != dim or (mlp_dim is not None and w1.shape[0] != mlp_dim):
            raise ts.error(f"{where}: first feed-forward kernel has shape {w1.shape}, expected (mlp_dim, {dim})")
        mlp_dim = w1.shape[0]
        w2 = ts.value(ff[1][1], (dim, mlp_dim))
        fb = ffn_b.get(i, [])
        if [k for k, _ in fb] != [k for k, _ in ff]:
            raise ts.error(f"{where}: expected a bias on both feed-forward layers")
        b1, b2 = ts.value(fb[0][1], (mlp_dim,)), ts.value(fb[1][1], (dim,))
        if [k for k, _ in ffn_tanh.get(i, [])] != [ff[0][0]]:
            raise ts.error(f"{where}: expected the tanh form of GELU after the first feed-forward layer")

        norms = ln.get(i, [])
        gammas = [ts.value(t, (dim,)) for _, t in norms if t["name"].endswith("gamma")]
        betas = [ts.value(t, (dim,)) for _, t in norms if t["name"].endswith("beta")]
        if len(gammas) != 2 or len(betas) != 2:
            raise ts.error(f"{where}: expected 2 LayerNorms, found {len(gammas)} gammas and {len(betas)} betas")
        layers.append(
            LayerWeights(
                wq=wq, wk=wk, wv=wv, wo=wo, bo=bo, ln1_g=gammas[0], ln1_b=betas[0],
                w1=w1, b1=b1, w2=w2, b2=b2, ln2_g=gammas[1], ln2_b=betas[1],
            )
        )  # fmt: skip

    attn_scale = ts.scalar(_ATTN_SCALE, "the attention scale")
    # Keras scales the scores by 1/sqrt(head_dim), so the scale gives the head count.
    head_dim = round(attn_scale**-2)
    if head_dim < 1 or dim % head_dim or abs(attn_scale * np.sqrt(head_dim) - 1.0) > 1e-6:
        raise ts.error(f"attention scale {attn_scale} is not 1/sqrt(head_dim) for a head_dim dividing {dim}")
    weights = KwtFloatWeights(
        in_w=in_w, in_b=in_b, cls=cls, pos=pos, layers=layers, head_w=head_w, head_b=head_b,
        dim=dim, mlp_dim=mlp_dim, heads=dim // head_dim, num_layers=num_layers,
        attn_scale=attn_scale, eps=ts.scalar(_LN_EPS, "the LayerNorm epsilon"),
    )  # fmt: skip
    _check_flags(path, weights)
    return weights


class TfliteKwt:
    """The TFLite interpreter running a KWT model on raw audio.

    Parameters
    ----------
    path : str or path-like, optional
        The ``.tflite`` file; default :func:`sim.paths.kwt1_tflite`.
    keep_intermediates : bool
        Keep every intermediate tensor (needed by :meth:`mfcc`; slower).

    Raises
    ------
    sim.errors.ModelError
        If the file is missing or not a TFLite model with a (1, 16000) float input and
        (1, 12) output.
    """

    def __init__(self, path: str | os.PathLike | None = None, keep_intermediates: bool = False):
        self.path = Path(path) if path is not None else paths.kwt1_tflite()
        self._interp = _interpreter(self.path, preserve_all_tensors=keep_intermediates)
        (inp,) = self._interp.get_input_details()
        (out,) = self._interp.get_output_details()
        if tuple(inp["shape"]) != (1, 16000) or tuple(out["shape"]) != (1, NUM_CLASSES):
            raise ModelError(
                f"{self.path}: model maps {tuple(inp['shape'])} to {tuple(out['shape'])}, "
                f"expected (1, 16000) to (1, {NUM_CLASSES})"
            )
        self._in, self._out = inp["index"], out["index"]
        self._keep = keep_intermediates
        details = self._interp.get_tensor_details()
        self._index = {t["name"]: t["index"] for t in details}
        mfcc_names = [
            t["name"] for t in details
            if _MFCC_OUT.search(t["name"]) and tuple(t["shape"])[-2:] == (NUM_FRAMES, NUM_MFCC)
        ]  # fmt: skip
        if len(mfcc_names) != 1:
            raise ModelError(f"{self.path}: expected one MFCC (DCT output) tensor, found {len(mfcc_names)}")
        self._mfcc_name = mfcc_names[0]

    def _run(self, clip: np.ndarray) -> None:
        self._interp.set_tensor(self._in, clip.astype(np.float32)[None])
        self._interp.invoke()

    def logits(self, audio: np.ndarray) -> np.ndarray:
        """Return the model's float32 logits, shape (12,) or (batch, 12), of clips (16000,) or (batch, 16000)."""
        x = check_audio(audio)
        out = []
        for clip in x.reshape(-1, x.shape[-1]):
            self._run(clip)
            out.append(self._interp.get_tensor(self._out)[0].copy())
        return out[0] if x.ndim == 1 else np.stack(out)

    def tensor(self, name: str) -> np.ndarray:
        """Return a copy of the named tensor as the last run left it (needs ``keep_intermediates``).

        Raises
        ------
        KeyError
            If the model has no tensor of that name.
        """
        if not self._keep:
            raise ValueError("intermediate tensors need TfliteKwt(..., keep_intermediates=True)")
        return self._interp.get_tensor(self._index[name]).copy()

    def mfcc(self, audio: np.ndarray) -> np.ndarray:
        """Return the model's internal MFCC tensor (98, 40) of one clip (16000,) (needs ``keep_intermediates``)."""
        x = check_audio(audio)
        if x.ndim != 1:
            raise ValueError("TfliteKwt.mfcc takes one clip of shape (16000,)")
        self._run(x)
        return self.tensor(self._mfcc_name).reshape(NUM_FRAMES, NUM_MFCC)


def save_float_npz(weights: KwtFloatWeights, path: str | os.PathLike) -> None:
    """Write the weights to a compressed ``.npz`` file (whole file or nothing).

    Keys: ``format`` (the string ``"kwt_float_v1"``); ``in_w``, ``in_b``, ``cls``, ``pos``,
    ``head_w``, ``head_b``; per layer i, ``l{i}.wq``, ``l{i}.wk``, ``l{i}.wv``, ``l{i}.wo``,
    ``l{i}.bo``, ``l{i}.ln1_g``, ``l{i}.ln1_b``, ``l{i}.w1``, ``l{i}.b1``, ``l{i}.w2``,
    ``l{i}.b2``, ``l{i}.ln2_g``, ``l{i}.ln2_b``; and 0-d config arrays ``dim``, ``mlp_dim``,
    ``heads``, ``num_layers``, ``attn_scale``, ``eps``. Shapes and meaning as in
    :class:`sim.kwt_float.KwtFloatWeights`; weight arrays float32 (lossless: the release is
    float32), kernels [out, in].
    """
    arrays = {"format": np.array(NPZ_FORMAT)}
    arrays.update({k: np.float32(getattr(weights, k)) for k in _TOP_KEYS})
    for i, layer in enumerate(weights.layers):
        arrays.update({f"l{i}.{k}": np.float32(getattr(layer, k)) for k in _LAYER_KEYS})
    arrays.update({k: np.array(getattr(weights, k)) for k in _CONFIG_KEYS})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_float_npz(path: str | os.PathLike) -> KwtFloatWeights:
    """Read weights written by :func:`save_float_npz`.

    Raises
    ------
    sim.errors.ModelError
        If the file is missing, not an ``.npz`` of this format, or has missing or
        inconsistent arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; expected an .npz written by save_float_npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k].astype(np.float64) if z[k].dtype.kind == "f" else z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a readable .npz file ({exc})") from exc
    if str(data.get("format", "")) != NPZ_FORMAT:
        raise ModelError(f"{path}: format tag is {data.get('format')!r}, expected {NPZ_FORMAT!r}")
    try:
        num_layers = int(data["num_layers"])
        layers = [LayerWeights(**{k: data[f"l{i}.{k}"] for k in _LAYER_KEYS}) for i in range(num_layers)]
        return KwtFloatWeights(
            **{k: data[k] for k in _TOP_KEYS},
            layers=layers,
            dim=int(data["dim"]),
            mlp_dim=int(data["mlp_dim"]),
            heads=int(data["heads"]),
            num_layers=num_layers,
            attn_scale=float(data["attn_scale"]),
            eps=float(data["eps"]),
        )
    except KeyError as exc:
        raise ModelError(f"{path}: array {exc.args[0]!r} is missing") from exc
