"""The float KWT reference and the TFLite weight import, against the TFLite interpreter."""

import numpy as np
import pytest

from sim import paths
from sim.errors import InputError, ModelError
from sim.kwt_float import KwtFloatWeights, LayerWeights, kwt_forward, predict_float
from sim.mfcc import mfcc
from sim.tflite_import import load_float_npz, save_float_npz
from sim.wav import list_dataset, read_wav

RTOL = 1e-4  # relative to the largest |logit| of the reference


def shipped_audio() -> np.ndarray:
    return np.stack([read_wav(p) for p, _ in list_dataset(paths.shipped_clips_dir())])


def shared_audio(n: int, seed: int) -> np.ndarray:
    """A fixed random sample of the shared clips (empty when shared/ is absent)."""
    folder = paths.speech_commands_dir()
    if not folder.is_dir():
        return np.zeros((0, 16000), np.float32)
    items = list_dataset(folder)
    pick = sorted(np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False))
    return np.stack([read_wav(items[i][0]) for i in pick])


def random_weights(rng, dim=16, mlp_dim=24, heads=2, num_layers=2) -> KwtFloatWeights:
    def r(*shape):
        return rng.normal(0, 0.3, shape)

    layers = [
        LayerWeights(
            wq=r(dim, dim), wk=r(dim, dim), wv=r(dim, dim), wo=r(dim, dim), bo=r(dim),
            ln1_g=1 + r(dim), ln1_b=r(dim), w1=r(mlp_dim, dim), b1=r(mlp_dim),
            w2=r(dim, mlp_dim), b2=r(dim), ln2_g=1 + r(dim), ln2_b=r(dim),
        )  # fmt: skip
        for _ in range(num_layers)
    ]
    return KwtFloatWeights(
        in_w=r(dim, 40), in_b=r(dim), cls=r(dim), pos=r(99, dim), layers=layers,
        head_w=r(12, dim), head_b=r(12), dim=dim, mlp_dim=mlp_dim, heads=heads,
        num_layers=num_layers, attn_scale=1 / np.sqrt(dim // heads),
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_path():
    pytest.importorskip("ai_edge_litert")
    if not paths.kwt1_tflite().is_file():
        pytest.skip(f"KWT-1 model not found at {paths.kwt1_tflite()} (shared/ absent)")
    return paths.kwt1_tflite()


@pytest.fixture(scope="module")
def weights(model_path):
    from sim.tflite_import import read_kwt_weights

    return read_kwt_weights(model_path)


@pytest.fixture(scope="module")
def tflite(model_path):
    from sim.tflite_import import TfliteKwt

    return TfliteKwt(model_path, keep_intermediates=True)


def test_labels_constant_matches_release():
    labels_txt = paths.kwt1_dir() / "labels.txt"
    if not labels_txt.is_file():
        pytest.skip(f"{labels_txt} not found (shared/ absent)")
    assert tuple(labels_txt.read_text().split()) == paths.labels() and len(paths.labels()) == 12


def test_imported_structure(weights):
    w = weights
    assert (w.dim, w.mlp_dim, w.heads, w.num_layers) == (64, 256, 1, 12)
    assert w.attn_scale == 0.125 and w.eps == pytest.approx(1e-6, rel=1e-6)
    arrays = [w.in_w, w.in_b, w.cls, w.pos, w.head_w, w.head_b]
    arrays += [getattr(lw, f) for lw in w.layers for f in LayerWeights.__dataclass_fields__
               if f != "linear"]
    assert not any(lw.linear for lw in w.layers)          # KWT-1: softmax attention
    assert sum(a.size for a in arrays) == 607_308  # the release's model_summary.txt


def test_logits_match_tflite(weights, tflite):
    audio = np.concatenate([shipped_audio(), shared_audio(6, seed=7)])
    ref = tflite.logits(audio).astype(np.float64)
    got = predict_float(weights, audio)
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() < RTOL, f"worst relative logit error {err.max():.2e}"
    np.testing.assert_array_equal(got.argmax(axis=1), ref.argmax(axis=1))
    np.testing.assert_allclose(predict_float(weights, audio[0]), got[0], rtol=0, atol=1e-9)


def test_trace_matches_tflite_intermediates(weights, tflite):
    """The traced tokens and block outputs are the tensors the TFLite graph computes."""
    clip = shipped_audio()[2]
    tflite.logits(clip)
    trace = {}
    kwt_forward(weights, mfcc(clip), trace)
    pairs = {
        "x0": "kws_transformer/add",
        "l0.h1": "kws_transformer/transformer_block/add",
        "l0.x1": "kws_transformer/transformer_block/layer_normalization/batchnorm/add_1",
        "l0.x2": "kws_transformer/transformer_block/layer_normalization_1/batchnorm/add_1",
        "l11.x2": "kws_transformer/transformer_block_11/layer_normalization_23/batchnorm/add_1",
    }
    for ours, theirs in pairs.items():
        ref = tflite.tensor(theirs)[0]
        err = np.abs(trace[ours][0] - ref).max() / np.abs(ref).max()
        assert err < RTOL, f"{ours}: relative error {err:.2e}"


def test_trace_contents():
    rng = np.random.default_rng(3)
    w = random_weights(rng)
    feats = rng.normal(0, 1, (3, 98, 40))
    trace = {}
    logits = kwt_forward(w, feats, trace)
    np.testing.assert_array_equal(trace["logits"], logits)
    assert trace["x0"].shape == (3, 99, 16)
    per_layer = {"q": 16, "k": 16, "v": 16, "attn": 16, "o": 16, "h1": 16, "x1": 16,
                 "ff1": 24, "gelu": 24, "ff2": 16, "h2": 16, "x2": 16}  # fmt: skip
    for i in range(2):
        for name, width in per_layer.items():
            assert trace[f"l{i}.{name}"].shape == (3, 99, width), name
        assert trace[f"l{i}.scores"].shape == trace[f"l{i}.probs"].shape == (3, 2, 99, 99)
        np.testing.assert_allclose(trace[f"l{i}.probs"].sum(-1), 1.0)
        lw = w.layers[i]
        normed = (trace[f"l{i}.x1"] - lw.ln1_b) / lw.ln1_g  # x1 = LN1(h1): zero mean per token
        np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-9)
        block_in = trace["x0"] if i == 0 else trace[f"l{i - 1}.x2"]
        np.testing.assert_allclose(trace[f"l{i}.h1"], block_in + trace[f"l{i}.o"], atol=1e-12)
        np.testing.assert_allclose(trace[f"l{i}.h2"], trace[f"l{i}.x1"] + trace[f"l{i}.ff2"], atol=1e-12)
    # q carries the scale: head 1's scores are its slice of q times its slice of k.
    q, k = trace["l0.q"][..., 8:], trace["l0.k"][..., 8:]
    np.testing.assert_allclose(trace["l0.scores"][:, 1], q @ k.transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(trace["l1.x2"][:, 0] @ w.head_w.T + w.head_b, logits, atol=1e-12)


def test_multi_head_matches_naive_loop():
    """Batched multi-head attention equals an explicit per-clip, per-head computation."""
    rng = np.random.default_rng(4)
    w = random_weights(rng, dim=16, mlp_dim=24, heads=4, num_layers=1)
    feats = rng.normal(0, 1, (2, 98, 40))
    lw = w.layers[0]

    def ln(v, g, b):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + w.eps) * g + b

    for b in range(2):
        x = np.vstack([w.cls, feats[b] @ w.in_w.T + w.in_b]) + w.pos
        heads = []
        for h in range(4):
            s = slice(4 * h, 4 * h + 4)
            a = (x @ lw.wq[s].T) @ (x @ lw.wk[s].T).T / 2.0
            a = np.exp(a - a.max(1, keepdims=True))
            heads.append(a / a.sum(1, keepdims=True) @ (x @ lw.wv[s].T))
        x = ln(x + np.hstack(heads) @ lw.wo.T + lw.bo, lw.ln1_g, lw.ln1_b)
        f = x @ lw.w1.T + lw.b1
        f = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f**3)))
        x = ln(x + f @ lw.w2.T + lw.b2, lw.ln2_g, lw.ln2_b)
        np.testing.assert_allclose(kwt_forward(w, feats[b]), x[0] @ w.head_w.T + w.head_b, atol=1e-10)


def test_bad_inputs_raise_input_error():
    w = random_weights(np.random.default_rng(5))
    with pytest.raises(InputError, match="shape"):
        kwt_forward(w, np.zeros((98, 41)))
    with pytest.raises(InputError, match="finite"):
        kwt_forward(w, np.full((98, 40), np.nan))
    with pytest.raises(InputError, match="NaN"):
        predict_float(w, np.full((2, 16000), np.nan, np.float32))


def test_inconsistent_weights_raise_model_error():
    w = random_weights(np.random.default_rng(6))
    with pytest.raises(ModelError, match=r"layers\[1\]\.w2"):
        KwtFloatWeights(**{**w.__dict__, "layers": [w.layers[0], LayerWeights(**{**w.layers[1].__dict__, "w2": np.zeros((3, 3))})]})
    with pytest.raises(ModelError, match="multiple of the head count"):
        KwtFloatWeights(**{**w.__dict__, "heads": 3})


def test_npz_round_trip(tmp_path):
    w = random_weights(np.random.default_rng(8))
    save_float_npz(w, tmp_path / "w.npz")
    back = load_float_npz(tmp_path / "w.npz")
    feats = np.random.default_rng(9).normal(0, 1, (98, 40))
    # Stored as float32 (lossless for the release, whose weights are float32).
    np.testing.assert_allclose(kwt_forward(back, feats), kwt_forward(w, feats), rtol=1e-5, atol=1e-6)
    save_float_npz(back, tmp_path / "w2.npz")
    np.testing.assert_array_equal(kwt_forward(load_float_npz(tmp_path / "w2.npz"), feats), kwt_forward(back, feats))
    assert (back.dim, back.mlp_dim, back.heads, back.num_layers, back.attn_scale, back.eps) == (
        w.dim, w.mlp_dim, w.heads, w.num_layers, w.attn_scale, w.eps)  # fmt: skip


def test_bad_npz_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_float_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match="not a readable .npz"):
        load_float_npz(tmp_path / "junk.npz")
    w = random_weights(np.random.default_rng(10))
    save_float_npz(w, tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "l1.b2"}
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ModelError, match="'l1.b2' is missing"):
        load_float_npz(tmp_path / "partial.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ModelError, match="format tag"):
        load_float_npz(tmp_path / "other.npz")


def test_bad_model_files_raise_model_error(model_path, tmp_path):
    from sim.tflite_import import TfliteKwt, read_kwt_weights

    raw = model_path.read_bytes()
    (tmp_path / "truncated.tflite").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "random.tflite").write_bytes(np.random.default_rng(12).bytes(100_000))
    (tmp_path / "empty.tflite").write_bytes(b"")
    for name in ("truncated", "random", "empty"):
        path = tmp_path / f"{name}.tflite"
        for load in (read_kwt_weights, TfliteKwt):
            with pytest.raises(ModelError, match="not a valid TFLite model") as info:
                load(path)
            assert str(path) in str(info.value)
    with pytest.raises(ModelError, match="does not exist"):
        read_kwt_weights(tmp_path / "missing.tflite")


def test_shipped_float_weights_equal_the_release():
    if not paths.kwt1_tflite().is_file():
        pytest.skip("shared KWT-1 release not present")
    from sim.tflite_import import read_kwt_weights
    a, b = read_kwt_weights(), load_float_npz(paths.repo_root() / "data" / "kwt1_float.npz")
    for name in ("in_w", "cls", "pos", "head_w"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for la, lb in zip(a.layers, b.layers):
        for name in ("wq", "wo", "w1", "ln2_g"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
    assert (a.attn_scale, a.eps) == (b.attn_scale, b.eps)
