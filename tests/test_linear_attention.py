"""Linear attention (φ = elu + 1, φ(Q)(φ(K)ᵀV) / φ(Q)Σφ(K)) selectable per encoder layer: the
float reference, the quantizer, the model file, the golden model and the compiled program on
the ISA interpreter (bit-exact), with fixed seeds. The RTL runs are in
tests/test_linear_attention_rtl.py."""
import dataclasses

import numpy as np
import pytest

from sim.compiler import check_program, compile_kwt
from sim.errors import KwsError, ModelError
from sim.golden import kwt, linear_attention, linear_mha
from sim.golden.delta_kwt import kwt_delta
from sim.kwt_float import kwt_forward, linear_attention_float
from sim.mfcc import mfcc
from sim.paths import repo_root, shipped_clips_dir
from sim.program import AccelConfig, interpret
from sim.qmodel import load_qmodel, save_qmodel
from sim.quantize import calibrate, quantize_kwt, with_linear_layers
from sim.tflite_import import load_float_npz
from sim.wav import list_dataset, read_wav

from .test_compiler import random_float_kwt


def run(job):
    ext, counters = interpret(job.image, job.prog_base, job.prog_len, job.config)
    return job.read(ext), counters


def linear_model(dim, heads, mlp, layers, linear, seed=0):
    w = with_linear_layers(random_float_kwt(dim, heads, mlp, layers, seed), linear)
    rng = np.random.default_rng(seed + 1)
    feats = rng.normal(0, 1, (6, 98, 40)) * np.linspace(20, 1, 40)
    return w, quantize_kwt(w, calibrate(w, [feats])), feats


def test_float_reference_is_the_normalized_form():
    """φ(q)(φ(k)ᵀ[v | 1]) with the last column as divisor equals the quadratic form
    (φ(q)φ(k)ᵀ / row sums)·v."""
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(0, 1, (3, 17, 8))
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))   # noqa: E731
    a = phi(q) @ phi(k).T
    np.testing.assert_allclose(linear_attention_float(q, k, v), (a / a.sum(1, keepdims=True)) @ v,
                               rtol=1e-12)


def test_linear_mha_is_per_head_linear_attention():
    rng = np.random.default_rng(2)
    q, k, v = rng.integers(-128, 128, (3, 2, 11, 12))
    lut = np.clip(np.arange(256) // 2 + 5, 0, 255)
    m_t, sh_t = rng.integers(1, 1 << 14, 3 * 5), rng.integers(10, 20, 3 * 5)
    m_l, sh_l = rng.integers(1, 1 << 14, 12), rng.integers(20, 30, 12)
    got = linear_mha(q, k, v, 3, lut, lut[::-1], m_t, sh_t, m_l, sh_l)
    for h in range(3):
        sl, st = slice(4 * h, 4 * h + 4), slice(5 * h, 5 * h + 5)
        np.testing.assert_array_equal(got[..., sl], linear_attention(
            q[..., sl], k[..., sl], v[..., sl], lut, lut[::-1], m_t[st], sh_t[st], m_l[sl],
            sh_l[sl]))
    with pytest.raises(ValueError, match="heads"):
        linear_mha(q, k, v, 5, lut, lut, m_t, sh_t, m_l, sh_l)


def test_quantized_model_tracks_float_and_round_trips(tmp_path):
    """A random dim-32, 2-head model with layer 1 linear: int8 logits within a few percent of
    the float model's; the model file keeps the linear fields; a file with ``linear`` but no
    table is refused."""
    w, m, feats = linear_model(32, 2, 64, 2, [1])
    assert [layer.linear for layer in m.layers] == [False, True]
    for f in feats:
        lq = kwt(m, m.quantize_input(f)) * m.scales["logits"]
        lf = kwt_forward(w, f)
        assert np.abs(lq - lf).max() < 0.1 * np.abs(lf).max()
    path = save_qmodel(m, tmp_path / "m.npz")
    m2 = load_qmodel(path)
    assert [layer.linear for layer in m2.layers] == [False, True]
    x = m.quantize_input(feats[0])
    np.testing.assert_array_equal(kwt(m2, x), kwt(m, x))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "layers.1.phi_q"}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelError, match="phi_q"):
        load_qmodel(tmp_path / "bad.npz")


@pytest.mark.parametrize("P, L, linear", [(1, 4, [0, 1]), (3, 8, [0]), (8, 16, [1])])
def test_compiled_linear_layers_bit_exact(P, L, linear):
    """Linear, mixed linear/softmax and multi-head models compile and run bit-exact with the
    golden model on the ISA interpreter; the programs pass the hazard check."""
    _, m, feats = linear_model(32, 2, 64, 2, linear, seed=P)
    x = m.quantize_input(feats[0])
    depths = {1: dict(amem_depth=32768, cmem_depth=16384),
              3: dict(amem_depth=8192, cmem_depth=8192)}.get(P, {})
    cfg = AccelConfig(pes=P, lanes=L, **depths)
    job = compile_kwt(m, x, config=cfg)
    np.testing.assert_array_equal(run(job)[0][0], kwt(m, x))
    assert check_program(job.program, cfg) == []


@pytest.fixture(scope="module")
def kwt1_linear11():
    """KWT-1 with linear attention in its last layer, calibrated on the twelve shipped clips."""
    w = with_linear_layers(load_float_npz(repo_root() / "data" / "kwt1_float.npz"), [11])
    clips = list_dataset(shipped_clips_dir())
    feats = np.stack([mfcc(read_wav(p)) for p, _ in clips])
    return w, quantize_kwt(w, calibrate(w, [feats])), feats


def test_kwt1_with_a_linear_layer(kwt1_linear11):
    """The published weights with layer 11 switched to linear attention: compiled for P = 8,
    L = 16, fits IMEM 256, bit-exact on the ISA interpreter; the int8 model's top-1 agrees with
    the same float model on the shipped clips."""
    w, m, feats = kwt1_linear11
    x = m.quantize_input(feats[3])
    cfg = AccelConfig(pes=8, lanes=16)
    job = compile_kwt(m, x, config=cfg)
    assert job.prog_len <= 256
    np.testing.assert_array_equal(run(job)[0][0], kwt(m, x))
    agree = [np.argmax(kwt(m, m.quantize_input(f))) == np.argmax(kwt_forward(w, f))
             for f in feats]
    assert np.mean(agree) >= 11 / 12


def test_errors():
    w = random_float_kwt(32, 2, 64, 2, 0)
    with pytest.raises(KwsError, match="outside"):
        with_linear_layers(w, [2])
    with pytest.raises(KwsError, match="comma"):
        with_linear_layers(w, "1;2")
    _, m, feats = linear_model(32, 2, 64, 2, [0])
    with pytest.raises(ValueError, match="linear-attention"):
        kwt_delta(m, m.quantize_input(feats[0]), 0)
    assert dataclasses.replace(w.layers[0]).linear is False
