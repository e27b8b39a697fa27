"""Golden units (docs/numerics.md §1-8, 11-13): exact definitions, error bounds, edge cases."""
import math

import numpy as np
import pytest

from sim.golden import (RSQRT_LUT, activation, add, delta_encode, divide, elu1, elu1_lut, encode_multiplier,
                        gelu_lut, gelu_tanh, mac, matmul, reduce_max, reduce_sum, requant, rshift_round, rsqrt,
                        wrap32)

RNG = np.random.default_rng(20261125)


def test_rshift_round_is_round_half_up():
    x = np.array([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])
    # x / 2 rounded half up: ties (odd x) go toward +inf.
    np.testing.assert_array_equal(rshift_round(x, 1), np.floor(x / 2 + 0.5).astype(int))
    np.testing.assert_array_equal(rshift_round(x, 0), x)
    big = RNG.integers(-(1 << 46), 1 << 46, 10000)
    for sh in (1, 7, 24, 47):
        ref = [math.floor(int(v) / 2 ** sh + 0.5) for v in big[:200]]
        np.testing.assert_array_equal(rshift_round(big[:200], sh), ref)


def test_matmul_exact_and_wraps():
    for m, k, n in [(1, 1, 1), (3, 7, 5), (99, 64, 192), (13, 257, 11)]:
        a = RNG.integers(-256, 256, (m, k))
        b = RNG.integers(-128, 128, (k, n))
        c0 = RNG.integers(-(1 << 20), 1 << 20, (n,))
        ref = [[sum(int(a[i, j]) * int(b[j, c]) for j in range(k)) + int(c0[c]) for c in range(n)] for i in range(min(m, 3))]
        np.testing.assert_array_equal(matmul(a, b, c0)[:3], ref)
    # Extremes: −256 × −128 = 2^15 per product; 65535 of them stay below 2^31.
    a = np.full((1, 65535), -256)
    b = np.full((65535, 1), -128)
    assert matmul(a, b)[0, 0] == 65535 * 32768
    # The accumulator wraps like a 32-bit adder.
    assert wrap32(np.array([1 << 31]))[0] == -(1 << 31)
    assert mac(np.array((1 << 31) - 1), 1, 1) == -(1 << 31)


def test_matmul_rejects_bad_input():
    with pytest.raises(ValueError):
        matmul(np.zeros((2, 3), int), np.zeros((4, 2), int))
    with pytest.raises(OverflowError):
        matmul(np.full((1, 1), 256), np.zeros((1, 1), int))
    with pytest.raises(OverflowError):
        matmul(np.zeros((1, 1), int), np.full((1, 1), -129))
    with pytest.raises(TypeError):
        matmul(np.zeros((1, 1)), np.zeros((1, 1), int))


def test_requant_matches_big_integer_reference_and_saturates():
    acc = RNG.integers(-(1 << 31), 1 << 31, 5000)
    m = RNG.integers(0, 1 << 15, 5000)
    sh = RNG.integers(0, 48, 5000)
    ref = [max(-128, min(127, math.floor(int(a) * int(mm) / 2 ** int(s) + 0.5))) for a, mm, s in zip(acc, m, sh)]
    np.testing.assert_array_equal(requant(acc, m, sh, -128, 127), ref)
    assert requant(np.array([1 << 30]), 32767, 0, -32768, 32767)[0] == 32767
    assert requant(np.array([-(1 << 31)]), 32767, 47, -128, 127)[0] == 0
    assert requant(np.array([12345]), 0, 5, -128, 127)[0] == 0
    with pytest.raises(OverflowError):
        requant(np.array([1]), 1 << 15, 0, -128, 127)
    with pytest.raises(OverflowError):
        requant(np.array([1]), 1, 48, -128, 127)


def test_encode_multiplier_relative_error():
    r = np.exp(RNG.uniform(np.log(2.0 ** -33), np.log(2.0 ** 14), 20000))
    m, sh = encode_multiplier(r)
    assert np.all(m < 1 << 15)
    assert np.max(np.abs(m / 2.0 ** sh / r - 1)) <= 2.0 ** -14
    with pytest.raises(ValueError):
        encode_multiplier(40000.0)
    with pytest.raises(ValueError):
        encode_multiplier(float("nan"))


def test_add_with_rescale():
    a = RNG.integers(-32768, 32768, 2000)
    b = RNG.integers(-128, 128, 2000)
    m, sh = encode_multiplier(3.7)
    ref = np.clip(a + np.floor(b * m / 2.0 ** sh + 0.5), -32768, 32767)
    np.testing.assert_array_equal(add(a, b, m, sh, -32768, 32767), ref)
    assert add(np.array([32767]), np.array([127]), m, sh, -32768, 32767)[0] == 32767


def test_reduce():
    x = RNG.integers(-(1 << 31), 1 << 31, (50, 99))
    np.testing.assert_array_equal(reduce_sum(x), [sum(map(int, r)) for r in x])
    np.testing.assert_array_equal(reduce_max(x), x.max(axis=1))
    assert reduce_sum(np.zeros((0,), int)) == 0
    with pytest.raises(ValueError):
        reduce_max(np.zeros((0,), int))


def test_divide_exact_and_by_zero():
    n = RNG.integers(0, 1 << 33, 20000)
    d = np.exp(RNG.uniform(0, np.log(2.0 ** 32 - 1), 20000)).astype(np.int64)
    np.testing.assert_array_equal(divide(n, d), n // d)
    assert divide(np.array([5]), np.array([0]))[0] == (1 << 33) - 1
    assert divide(np.array([1 << 32]), np.array([1 << 15]))[0] == 1 << 17


def test_rsqrt_error_bound():
    v = np.concatenate([np.arange(0, 1 << 16), 1 << np.arange(48), (1 << np.arange(1, 48)) - 1,
                        RNG.integers(1, 1 << 48, 100000)])
    R, p = rsqrt(v)
    assert R.max() < 1 << 15 and p.min() >= -7 and p.max() <= 16
    rel = R * 2.0 ** (-22.0 - p) * np.sqrt(np.maximum(v, 1).astype(np.float64)) - 1
    assert np.abs(rel).max() <= 1.01 * 2.0 ** -10
    assert RSQRT_LUT.shape == (768,)
    R0, p0 = rsqrt(np.array([0]))
    R1, p1 = rsqrt(np.array([1]))
    assert (R0[0], p0[0]) == (R1[0], p1[0])


@pytest.mark.parametrize("s_in", [0.004, 0.03, 0.1])
def test_gelu_table_correctly_rounded(s_in):
    s_out = gelu_tanh(127 * s_in) / 255
    lut = gelu_lut(s_in, s_out)
    q = np.arange(-128, 128)
    exact = gelu_tanh(q * s_in) / s_out
    inside = (exact > -256.5) & (exact < 255.5)
    assert np.abs(lut - exact)[inside].max() <= 0.5
    np.testing.assert_array_equal(activation(q, lut), lut)
    assert gelu_tanh(np.array([0.0]))[0] == 0


def test_elu1_table_and_range():
    s_in, s_out = 0.05, (127 * 0.05 + 1) / 255
    lut = elu1_lut(s_in, s_out)
    q = np.arange(-128, 128)
    assert lut.min() >= 0 and lut.max() <= 255
    assert np.abs(lut - elu1(q * s_in) / s_out).max() <= 0.5
    with pytest.raises(ValueError):
        elu1_lut(0.0, 1.0)
    with pytest.raises(OverflowError):
        activation(np.array([128]), lut)


def test_delta_encode_rules():
    x = RNG.integers(-128, 128, (99, 64))
    d0, m0, xh0 = delta_encode(x, 0)
    np.testing.assert_array_equal(xh0, x)                      # θ = 0: X̂ = X, dense
    np.testing.assert_array_equal(np.cumsum(d0, axis=0), x)
    for theta in (1, 5, 20, 255):
        d, m, xh = delta_encode(x, theta)
        np.testing.assert_array_equal(d[0], x[0])              # first token untouched
        np.testing.assert_array_equal(np.cumsum(d, axis=0), xh)
        assert np.all(np.abs(d[1:][m[1:]]) > theta)
        assert np.all(np.abs(x - xh) <= max(theta, 0) + 0)     # X̂ tracks X within θ
        np.testing.assert_array_equal(m, d != 0)
    d, m, _ = delta_encode(x, 255)
    assert not m[1:].any()                                     # nothing can exceed 255
    same = np.tile(RNG.integers(-128, 128, (1, 16)), (10, 1))
    d, m, _ = delta_encode(same, 0)
    assert not m[1:].any()
    ext = np.array([[-128] * 4, [127] * 4])
    d, _, _ = delta_encode(ext, 0)
    assert d[1, 0] == 255                                      # int9 range is needed
    assert delta_encode(np.zeros((0, 4), int), 3)[0].shape == (0, 4)
    with pytest.raises(ValueError):
        delta_encode(x, 256)
