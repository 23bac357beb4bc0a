"""Where a process runs and keeps its caches: the device by name, and the cache folder (synthetic data, stand-in
encoders, generated benchmark files). Shared by training, pretraining and profiling without importing each other."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from harness.errors import HarnessError

DEFAULT_CACHE = Path(os.environ.get("REC_BENCH_CACHE", Path.home() / ".cache" / "rec-petl-bench"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HarnessError("--device cuda asked for, but torch sees no GPU: use --device cpu or auto")
        if dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif name != "cpu":
        raise HarnessError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)
