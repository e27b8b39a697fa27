"""Golden model, compiler and runners of the KWT accelerator."""
import os

# The golden model multiplies many small matrices: BLAS threads only add contention on the
# 2-core machines this runs on (5-10x slower measured), so default to one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
