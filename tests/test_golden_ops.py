"""Golden operations (docs/numerics.md §9, §10, §14) against float64, with the bounds the doc states."""
import numpy as np
import pytest

from sim.golden import (attention, elu1, elu1_lut, encode_multiplier, ffn, gelu_lut, gelu_tanh, layernorm,
                        layernorm_constants, linear_attention, mha, softmax, softmax_constants)
from sim.golden.fixed import round_half_up

RNG = np.random.default_rng(7)


def float_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def q8(x, s):
    return np.clip(round_half_up(x / s), -128, 127)


@pytest.mark.parametrize("scale", [1e-6, 1e-4, 1e-2, 0.1, 1.0])
def test_softmax_error_bound(scale):
    rows = [RNG.integers(-(1 << 24), 1 << 24, (300, 99)),          # random
            np.full((5, 99), 12345),                                # all equal
            np.tile(np.r_[1 << 30, np.zeros(98, int)], (3, 1)),     # one-hot, huge logit
            RNG.integers(-3, 4, (50, 17)),                          # tiny logits
            np.array([[-(1 << 31), (1 << 31) - 1]])]                # extreme range
    ce, she = softmax_constants(scale)
    for s in rows:
        p = softmax(s, ce, she)
        assert p.min() >= 0 and p.max() <= 255
        err = np.abs(p / 256 - float_softmax(s * scale)).max()
        assert err <= 1.25 / 256, (scale, err)
    assert softmax(np.zeros((3, 0), int), ce, she).shape == (3, 0)
    np.testing.assert_array_equal(softmax(np.full((1, 4), 7), ce, she), [[64, 64, 64, 64]])


def float_layernorm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


@pytest.mark.parametrize("d", [1, 7, 64, 192, 1024])
def test_layernorm_error_bound(d):
    g = RNG.normal(1, 0.3, d)
    b = RNG.normal(0, 0.3, d)
    s_h = 1e-3
    h = np.clip(round_half_up(RNG.normal(0, 3, (200, d)) / s_h), -32768, 32767)
    ref = float_layernorm(h * s_h, g, b, 1e-6)
    s_out = np.abs(ref).max() / 127
    k = layernorm_constants(g, b, s_h, s_out, 1e-6)
    y = layernorm(h, **k)
    # Bound in output LSBs (docs §10): ½ from the final rounding + rsqrt and n_i rounding.
    assert np.abs(y - ref / s_out).max() <= 0.6


def test_layernorm_edge_cases():
    d = 64
    g, b = RNG.normal(1, 0.3, d), RNG.normal(0, 0.3, d)
    k = layernorm_constants(g, b, 1e-3, 0.05, 0.0)
    # Zero variance (E = 0 here): the output is beta.
    for v in (0, -32768, 32767):
        np.testing.assert_array_equal(layernorm(np.full((1, d), v), **k)[0], np.clip(round_half_up(b / 0.05), -128, 127))
    # Extremes saturate instead of wrapping.
    h = np.where(np.arange(d) % 2, 32767, -32768)[None]
    y = layernorm(h, **k)
    assert y.min() >= -128 and y.max() <= 127
    assert layernorm(np.zeros((2, 0), int), **k).shape == (2, 0)
    with pytest.raises(ValueError):
        layernorm_constants(np.ones(1025), np.zeros(1025), 1.0, 1.0, 1e-6)


def _attention_case(n=99, d=64, sharp=1.0):
    q = RNG.normal(0, 1, (n, d)) * sharp / np.sqrt(d)
    k = RNG.normal(0, 1, (n, d))
    v = RNG.normal(0, 1, (n, d))
    ref = float_softmax(q @ k.T) @ v
    s_q, s_k = np.abs(q).max() / 127, np.abs(k).max() / 127
    s_v = np.abs(v).max(0) / 127
    s_a = np.abs(ref).max(0) / 127
    ce, she = softmax_constants(s_q * s_k)
    m_a, sh_a = encode_multiplier(s_v / 256 / s_a)
    return (q8(q, s_q), q8(k, s_k), q8(v, s_v), ce, she, m_a, sh_a), ref, s_a


@pytest.mark.parametrize("sharp", [0.3, 1.0, 4.0])
def test_attention_error_against_float(sharp):
    args, ref, s_a = _attention_case(sharp=sharp)
    a = attention(*args)
    rel = np.sqrt(((a * s_a - ref) ** 2).mean() / (ref ** 2).mean())
    assert rel <= 0.04, rel


def test_mha_is_per_head_attention():
    args, _, _ = _attention_case(n=20, d=64)
    q, k, v, ce, she, m_a, sh_a = args
    out = mha(q, k, v, 4, ce, she, m_a, sh_a)
    for h in range(4):
        sl = slice(16 * h, 16 * (h + 1))
        np.testing.assert_array_equal(out[:, sl], attention(q[:, sl], k[:, sl], v[:, sl], ce, she, m_a[sl], sh_a[sl]))
    with pytest.raises(ValueError):
        mha(q, k, v, 5, ce, she, m_a, sh_a)


def test_linear_attention_error_against_float():
    n, d = 99, 64
    q, k, v = (RNG.normal(0, 1, (n, d)) for _ in range(3))
    pq, pk = elu1(q), elu1(k)
    kv = pk.T @ v
    ks = pk.sum(0)
    ref = (pq @ kv) / (pq @ ks)[:, None]
    s_q, s_k, s_v = np.abs(q).max() / 127, np.abs(k).max() / 127, np.abs(v).max() / 127
    s_pq, s_pk = elu1(127 * s_q) / 255, elu1(127 * s_k) / 255
    s_t = np.r_[np.abs(kv).max(0), ks.max()] / 127
    s_acc = np.r_[np.full(d, s_pk * s_v), s_pk]
    m_t, sh_t = encode_multiplier(s_acc / s_t)
    s_o = np.abs(ref).max() / 127
    # out = num/den · (s_t[:d]/s_t[d]) / s_o; the divide leaves num/den in units of 2^-16.
    m_o, sh_o = encode_multiplier(s_t[:d] / s_t[d] / s_o / 2 ** 16)
    a = linear_attention(q8(q, s_q), q8(k, s_k), q8(v, s_v), elu1_lut(s_q, s_pq), elu1_lut(s_k, s_pk),
                         m_t, sh_t, m_o, sh_o)
    rel = np.sqrt(((a * s_o - ref) ** 2).mean() / (ref ** 2).mean())
    assert rel <= 0.03, rel


def test_ffn_error_against_float():
    n, d, f = 99, 64, 256
    x = RNG.normal(0, 1, (n, d))
    w1, b1 = RNG.normal(0, 1 / 8, (f, d)), RNG.normal(0, 0.1, f)
    w2, b2 = RNG.normal(0, 1 / 16, (d, f)), RNG.normal(0, 0.1, d)
    h = x @ w1.T + b1
    g = gelu_tanh(h)
    ref = g @ w2.T + b2
    s_x, s_f, s_g, s_y = np.abs(x).max() / 127, np.abs(h).max() / 127, g.max() / 255, np.abs(ref).max() / 127
    s_w1 = np.abs(w1).max(1) / 127
    s_w2 = np.abs(w2).max(1) / 127
    w18, w28 = round_half_up(w1 / s_w1[:, None]), round_half_up(w2 / s_w2[:, None])
    m1, sh1 = encode_multiplier(s_x * s_w1 / s_f)
    m2, sh2 = encode_multiplier(s_g * s_w2 / s_y)
    y = ffn(q8(x, s_x), w18, round_half_up(b1 / (s_x * s_w1)), m1, sh1, gelu_lut(s_f, s_g), w28,
            round_half_up(b2 / (s_g * s_w2)), m2, sh2, out=(-128, 127))
    rel = np.sqrt(((y * s_y - ref) ** 2).mean() / (ref ** 2).mean())
    assert rel <= 0.04, rel
