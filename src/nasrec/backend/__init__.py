"""Embedding backends: nasrec's own sparse-gradient tables, or TorchRec's fused tables (an optional extra)."""

from __future__ import annotations

from types import ModuleType

from nasrec.errors import NasrecError

EMBEDDINGS = ("nasrec", "torchrec")
# The fused embedding optimizers a TorchRec table can run in its backward (fbgemm's); adam on GPUs only.
FUSED_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd", "adam")
# How TorchRec's planner may spread the tables over torchrun's processes (`nasrec.backend.sharding`)
SHARDINGS = ("table-wise", "column-wise", "row-wise")
INSTALL_HINT = (
    'pip install "nasrec[torchrec]" && pip install --no-deps torchrec==1.8.0 '
    "(torchrec's own requirements name the CUDA build of fbgemm; README.md, TorchRec)"
)


def require_torchrec() -> ModuleType:
    """The torchrec module, or a one-line error saying how to install it."""
    try:
        import fbgemm_gpu  # noqa: F401  (its kernels must load with this torch, or torchrec fails later)
        import torchrec
    except (ImportError, OSError) as exc:
        raise NasrecError(
            f"--embeddings torchrec needs TorchRec, which does not import here ({exc}): {INSTALL_HINT}"
        ) from None
    return torchrec


def torchrec_available() -> bool:
    """Whether the TorchRec backend can be used in this environment."""
    try:
        require_torchrec()
    except NasrecError:
        return False
    return True
