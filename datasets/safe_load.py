"""torch.load without running code a downloaded file carries.

Every index, weight and checkpoint file is read with `torch.load(weights_only=True)` and an explicit
allow-list of the non-tensor objects the real files hold: numpy arrays, scalars and dtypes (index files
written with numpy boxes; numpy 1.x pickles name `numpy.core.*`, numpy 2 `numpy._core.*`), checked before numpy
reads their bytes (plain numeric, bool and string dtypes only, data exactly the size the shape says), and
argparse.Namespace with path values (DETR's and TransVG's checkpoints store their `args`). A file that needs
anything else is refused with one line naming it and the flag that allows the full unpickler
(`--trust-pickles`); nothing falls back to `weights_only=False` on its own.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import pickle
import re
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

from datasets.errors import DataError

TRUST_FLAG = "--trust-pickles"


class UnsafeFileError(DataError):
    """The file needs the full unpickler, which can run arbitrary code."""


PLAIN_KINDS = "biufcSU"  # bool, integers, floats, complex, bytes, str: dtypes whose bytes are only values
REFUSED = "refused numpy content: "  # marks our own refusals inside torch's wrapped error text


def _check_dtype(dtype, what: str) -> None:
    """Refuse a dtype whose raw bytes could be read as something else than values: object fields (a structured
    dtype can hold one: its bytes would become object pointers), sub-arrays, void or datetime kinds."""
    if not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.kind not in PLAIN_KINDS:
        raise pickle.UnpicklingError(REFUSED + f"a numpy {what} of dtype {dtype!r}: only plain numeric, bool and "
                                     "string arrays are allowed")


class CheckedArray(np.ndarray):
    """What the allow-listed `_reconstruct` builds: an ndarray whose pickled state is checked before numpy reads it
    (a plain dtype, a byte string of exactly shape x itemsize bytes: nothing allocated beyond what the file holds)."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(REFUSED + "a numpy array with a malformed pickled state")
        shape, dtype, _, data = state[-4:]
        _check_dtype(dtype, "array")
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            raise pickle.UnpicklingError(REFUSED + f"a numpy array with shape {shape!r}")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(REFUSED + f"a numpy array of shape {shape} and dtype {dtype} whose data "
                                         f"is not its {math.prod(shape) * dtype.itemsize} bytes")
        super().__setstate__(state)


def _reconstruct(cls, shape, dtype):
    """numpy's pickle entry point for arrays (`numpy.core.multiarray._reconstruct`), which builds an empty array that
    BUILD then fills; its own shape and dtype arguments are ignored (a crafted shape allocated 22 GiB here)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(REFUSED + f"a numpy array of class {cls!r}")
    return CheckedArray((0,), np.uint8)


def _scalar(dtype, data=None):
    """numpy's pickle entry point for scalars (`numpy.core.multiarray.scalar`), for plain dtypes only."""
    _check_dtype(dtype, "scalar")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(REFUSED + f"a numpy scalar of dtype {dtype} whose data is not "
                                     f"{dtype.itemsize} bytes")
    core = np._core if hasattr(np, "_core") else np.core
    return core.multiarray.scalar(dtype, data)


@lru_cache(maxsize=1)
def allowed_globals() -> list:
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, np.ndarray, np.dtype, CheckedArray,
            *((fn, f"numpy.{core}.multiarray.{name}") for core in ("core", "_core")
              for fn, name in ((_reconstruct, "_reconstruct"), (_scalar, "scalar"))),
            *dtypes]


def _plain(obj):
    """The loaded object with every CheckedArray as a plain ndarray (the check is done; callers see numpy's type)."""
    if isinstance(obj, CheckedArray):
        return obj.view(np.ndarray)
    if type(obj) in (list, tuple) and any(isinstance(v, (CheckedArray, list, tuple, dict)) for v in obj):
        return type(obj)(_plain(v) for v in obj)
    if type(obj) in (dict, OrderedDict) and any(isinstance(v, (CheckedArray, list, tuple, dict)) for v in obj.values()):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**_plain(vars(obj)))
    return obj


def torch_load(path, trust: bool = False, what: str = "file"):
    """The object in `path` (on the CPU); UnsafeFileError if it needs more than the allow-list and not `trust`.
    Other failures (a missing, truncated or foreign file) propagate for the caller to word."""
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _plain(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as err:
        refused = re.search(REFUSED + r"(.+)", str(err))
        if refused:  # no unpickler should read it: numpy would take its bytes for pointers or allocate what it says
            raise DataError(f"{what} {path} holds {refused.group(1)}; no index, weight or checkpoint file does: "
                            "it is damaged or crafted, get it again from its source") from None
        if not trust:
            # torch words an object outside the allow-list in two ways: not allowed, or from a blocked module (os, sys)
            found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
            if found is None:
                raise  # not a refused object type: a broken file, for the caller to word
            raise UnsafeFileError(f"{what} {path} needs the full unpickler ({found.group(1)}), which can run any "
                                  f"code the file carries; pass {TRUST_FLAG} only if you trust where it came "
                                  "from") from None
    return torch.load(path, map_location="cpu", weights_only=False)
