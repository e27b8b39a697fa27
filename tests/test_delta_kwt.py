"""Delta KWT golden model (sim.golden.delta_kwt): θ = 0 and dense equal sim.golden.kwt bit for
bit, MAC accounting, larger θ skips more, bad thresholds are refused."""
import numpy as np
import pytest

from sim.golden import delta_encode, kwt
from sim.golden.delta_kwt import SITES, delta_rows, dense_macs, kwt_delta, normalize_thresholds
from sim.quantize import calibrate, quantize_kwt
from tests.test_kwt_golden import random_kwt


@pytest.fixture(scope="module")
def small():
    w = random_kwt(32, 2, 64, 2, seed=3)
    rng = np.random.default_rng(4)
    # Slowly varying frames, like speech features: consecutive tokens are correlated.
    feats = np.cumsum(rng.normal(0, 0.3, (6, 98, 40)), axis=1) * np.linspace(8, 1, 40)
    model = quantize_kwt(w, calibrate(w, [feats]))
    return model, model.quantize_input(feats)


def test_dense_and_theta0_equal_kwt(small):
    model, x = small
    ref = kwt(model, x)
    for theta in (None, 0, {s: 0 for s in SITES}):
        logits, macs = kwt_delta(model, x, theta)
        assert np.array_equal(logits, ref)
        assert macs["dense"].shape == (x.shape[0],)
        assert np.all(macs["dense"] == dense_macs(model))
    assert np.all(kwt_delta(model, x, None)[1]["executed"] == dense_macs(model))
    # θ = 0 still skips the zero deltas (and zeros of the first row).
    assert np.all(kwt_delta(model, x, 0)[1]["executed"] < dense_macs(model))
    # Per clip counts equal the counts of that clip alone.
    one = kwt_delta(model, x[2], 4)[1]
    assert one["executed"] == kwt_delta(model, x, 4)[1]["executed"][2]


def test_more_threshold_skips_more(small):
    model, x = small
    executed = [int(kwt_delta(model, x, t)[1]["executed"].sum()) for t in (0, 4, 32, 255)]
    assert executed == sorted(executed, reverse=True) and executed[-1] < executed[0]
    # θ = 255: only the first token's row (and nothing later) is sent at int8 sites.
    logits, _ = kwt_delta(model, x, 255)
    assert logits.shape == (x.shape[0], 12)


def test_per_site_thresholds_only_touch_their_site(small):
    model, x = small
    ref = kwt(model, x)
    logits, macs = kwt_delta(model, x, {"ffn2": 255})
    assert np.all(macs["executed"] < macs["dense"])
    assert logits.shape == ref.shape


def test_delta_rows_matches_delta_encode():
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.integers(-6, 7, (40, 16)), axis=0).clip(-128, 127)
    for theta in (0, 3, 50):
        _, mask, xhat = delta_encode(x, theta)
        got, nnz = delta_rows(x[None], theta)
        assert np.array_equal(got[0], xhat)
        assert np.array_equal(nnz[0], mask.sum(axis=1))


@pytest.mark.parametrize("bad", [-1, 256, 1.5, "3", True, {"nope": 1}, {"qkv": 300}])
def test_bad_thresholds(bad):
    with pytest.raises(ValueError):
        normalize_thresholds(bad)
