"""torch.load without running code a downloaded file carries.

Every index, weight and checkpoint file is read with `torch.load(weights_only=True)` and an explicit
allow-list of the non-tensor objects the real files hold: numpy arrays, scalars and dtypes (index files
written with numpy boxes; numpy 1.x pickles name `numpy.core.*`, numpy 2 `numpy._core.*`) and
argparse.Namespace with path values (DETR's and TransVG's checkpoints store their `args`). A file that needs
anything else is refused with one line naming it and the flag that allows the full unpickler
(`--trust-pickles`); nothing falls back to `weights_only=False` on its own.
"""
from __future__ import annotations

import argparse
import pathlib
import pickle
import re
from functools import lru_cache

import numpy as np
import torch

from datasets.errors import DataError

TRUST_FLAG = "--trust-pickles"


class UnsafeFileError(DataError):
    """The file needs the full unpickler, which can run arbitrary code."""


@lru_cache(maxsize=1)
def allowed_globals() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, np.ndarray, np.dtype, reconstruct, scalar,
            (reconstruct, "numpy.core.multiarray._reconstruct"), (scalar, "numpy.core.multiarray.scalar"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), (scalar, "numpy._core.multiarray.scalar"),
            *dtypes]


def torch_load(path, trust: bool = False, what: str = "file"):
    """The object in `path` (on the CPU); UnsafeFileError if it needs more than the allow-list and not `trust`.
    Other failures (a missing, truncated or foreign file) propagate for the caller to word."""
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if found is None:
                raise  # not a refused object type: a broken file, for the caller to word
            raise UnsafeFileError(f"{what} {path} needs the full unpickler ({found.group(1)}), which can run any "
                                  f"code the file carries; pass {TRUST_FLAG} only if you trust where it came "
                                  "from") from None
    return torch.load(path, map_location="cpu", weights_only=False)
