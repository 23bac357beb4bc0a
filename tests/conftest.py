"""Shared fixtures: no hub access in any test, and one small synthetic dataset per session."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Synthetic data (seed 13, 30 images per name) under all five names; read-only for tests."""
    from datasets.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=13, images=30)
    return root


TINY_IMAGES = 12


@pytest.fixture
def tiny_run_flags(tmp_path, monkeypatch):
    """Flags of a seconds-long tiny run on a small synthetic set in a cache of the test's own (subprocesses and
    submitit jobs read it from the environment)."""
    from datasets.synth import ensure_synthetic

    cache = tmp_path / "cache"
    ensure_synthetic(cache, seed=13, images=TINY_IMAGES)
    monkeypatch.setenv("REC_BENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"dataset": "unc", "random_init": True, "synthetic_images": TINY_IMAGES, "device": "cpu", "epochs": 1,
            "max_steps": 2, "batch_size": 4, "num_workers": 0, "skip_done": True}
