"""DMATMUL cycles against the sparsity of Δ: one delta matmul on token rows that change by
random steps of at most ``step`` per token (θ = 4), Amaranth RTL counters next to the dense
beat count ⌈M/P⌉·tiles·K. Usage: ``python benchmarks/dmatmul.py`` (P = 2, L = 4, ≈ 1 min)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sim.golden import matmul  # noqa: E402
from tests.test_accelerator_ops import fit  # noqa: E402
from tests.test_dmatmul import cmem_case, rows_case, run_both, tiles  # noqa: E402


def main():
    P, L, M, K, N, theta = 2, 4, 12, 16, 8, 4
    rng = np.random.default_rng(33)
    W = rng.integers(-128, 128, (K, N))
    bias = np.zeros(N, np.int64)
    dense = -(-M // P) * tiles(N, L) * K
    print(f"P={P} L={L} M={M} K={K} N={N} theta={theta}; dense MATMUL beats {dense}")
    print("step  nnz(Δ)  MAC_CYCLES  CYCLES  ARRAY_CYCLES  model CYCLES")
    for step in (60, 8, 2, 0):
        X = rows_case(rng, M, K, step)
        m, sh = fit(matmul(X, W), 300)
        pg, _ = cmem_case(P, L, X, W, theta, bias, m, sh)
        r, _, cnt = run_both(pg, P)
        from sim.golden.delta_kwt import delta_rows
        nnz = int(delta_rows(X, theta)[1].sum())
        print(f"{step:4d}  {nnz:6d}  {r['mac_cycles']:10d}  {r['cycles']:6d}  "
              f"{r['array_cycles']:12d}  {cnt['CYCLES']:12d}")


if __name__ == "__main__":
    main()
