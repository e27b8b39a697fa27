import os

# Before numpy loads: BLAS threads only add contention on the 2-core CI machines.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
