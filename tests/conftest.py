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
