"""The whole integer KWT (golden) against the float reference: the real KWT-1 on shipped clips,
and random multi-head models (KWT-2/3 shapes) through the same quantizer."""
import numpy as np
import pytest

from sim.golden import kwt
from sim.kws import DEFAULT_MODEL, FLOAT_MODEL
from sim.kwt_float import KwtFloatWeights, LayerWeights, kwt_forward
from sim.mfcc import mfcc
from sim.paths import shipped_clips_dir
from sim.qmodel import load_qmodel
from sim.quantize import calibrate, quantize_kwt
from sim.tflite_import import load_float_npz
from sim.wav import list_dataset, read_wav


@pytest.fixture(scope="module")
def shipped():
    items = list_dataset(shipped_clips_dir())
    return np.stack([mfcc(read_wav(p)) for p, _ in items]), [lab for _, lab in items]


def rel_rms(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def test_kwt1_int8_tracks_float(shipped):
    feats, labels = shipped
    model = load_qmodel(DEFAULT_MODEL)
    weights = load_float_npz(FLOAT_MODEL)
    lf = kwt_forward(weights, feats)
    lq = kwt(model, model.quantize_input(feats)) * model.scales["logits"]
    # Measured 0.03-0.04 on real speech; docs/numerics.md states the bound.
    assert rel_rms(lq, lf) <= 0.08
    np.testing.assert_array_equal(lq.argmax(1), lf.argmax(1))


def test_trace_names_match_float(shipped):
    feats, _ = shipped
    model = load_qmodel(DEFAULT_MODEL)
    tq, tf = {}, {}
    kwt(model, model.quantize_input(feats[:2]), tq)
    kwt_forward(load_float_npz(FLOAT_MODEL), feats[:2], tf)
    assert {k for k in tf if k.split(".")[-1] != "probs"} <= set(tq)
    # The first layer's output, dequantized per column, is close to float.
    s = np.asarray(model.scales["l0.x2"])
    assert rel_rms(tq["l0.x2"] * s, tf["l0.x2"]) <= 0.06


def random_kwt(dim, heads, mlp, layers, seed):
    rng = np.random.default_rng(seed)
    n = lambda *shape, s=1.0: rng.normal(0, s, shape)
    lw = [LayerWeights(wq=n(dim, dim, s=dim ** -0.5), wk=n(dim, dim, s=dim ** -0.5), wv=n(dim, dim, s=dim ** -0.5),
                       wo=n(dim, dim, s=dim ** -0.5), bo=n(dim, s=0.1), ln1_g=1 + n(dim, s=0.1), ln1_b=n(dim, s=0.1),
                       w1=n(mlp, dim, s=dim ** -0.5), b1=n(mlp, s=0.1), w2=n(dim, mlp, s=mlp ** -0.5), b2=n(dim, s=0.1),
                       ln2_g=1 + n(dim, s=0.1), ln2_b=n(dim, s=0.1)) for _ in range(layers)]
    return KwtFloatWeights(in_w=n(dim, 40, s=0.05), in_b=n(dim, s=0.1), cls=n(dim), pos=n(99, dim, s=0.5), layers=lw,
                           head_w=n(12, dim, s=dim ** -0.5), head_b=n(12, s=0.1), dim=dim, mlp_dim=mlp, heads=heads,
                           num_layers=layers, attn_scale=(dim // heads) ** -0.5)


@pytest.mark.parametrize("dim, heads", [(64, 1), (128, 2), (192, 3)])
def test_random_multihead_models_track_float(dim, heads):
    w = random_kwt(dim, heads, 2 * dim, 2, seed=dim)
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 1, (24, 98, 40)) * np.linspace(20, 1, 40)
    model = quantize_kwt(w, calibrate(w, [feats]))
    lq = kwt(model, model.quantize_input(feats[16:])) * model.scales["logits"]
    lf = kwt_forward(w, feats[16:])
    # Untrained random weights quantize worse than KWT-1 (measured 0.05-0.10).
    assert rel_rms(lq, lf) <= 0.12


def test_quantize_input_rejects_bad_features():
    model = load_qmodel(DEFAULT_MODEL)
    with pytest.raises(ValueError):
        model.quantize_input(np.full((98, 40), np.nan))
    with pytest.raises(ValueError):
        model.quantize_input(np.zeros((97, 40)))
