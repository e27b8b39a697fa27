"""hw.exp.Exp against sim.golden.exp: exhaustive over all 2^16 inputs, with back-pressure."""
import numpy as np
import pytest

from hw.exp import Exp
from sim.golden import exp
from tb.runner import emit, lint, run_cocotb, simulators
from tests.streams import run_stream_test

U_ALL = np.arange(1 << 16)


def test_golden_exp_error_bound():
    # docs/numerics.md §7: within 1 LSB of 2^15·2^(−u/256) everywhere.
    err = np.abs(exp(U_ALL) - 2.0 ** 15 * 2.0 ** (-U_ALL / 256.0))
    assert err.max() <= 1.0
    assert exp(np.array([0]))[0] == 1 << 15 and exp(np.array([65535]))[0] == 0


def test_golden_exp_rejects_out_of_range():
    with pytest.raises(OverflowError):
        exp(np.array([-1]))
    with pytest.raises(TypeError):
        exp(np.array([1.5]))


def test_exp_amaranth_exhaustive():
    out = run_stream_test(Exp(), U_ALL.tolist(), stall=0.2, seed=3)
    np.testing.assert_array_equal(np.array(out), exp(U_ALL))


def test_exp_lint():
    lint(emit(Exp(), "exp"), "exp")


@pytest.mark.parametrize("simulator", simulators())
def test_exp_cocotb_exhaustive(simulator):
    run_cocotb(Exp(), "exp", "tb.test_exp", vectors={"u": U_ALL, "e": exp(U_ALL)}, simulator=simulator)
