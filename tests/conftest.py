import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the shared helpers in tests/nnunet_e2e.py

from nnunet_e2e import base_env, prepare_dataset  # noqa: E402


@pytest.fixture(scope="session")
def e2e_cache(tmp_path_factory) -> str:
    """Folder shared by every test (and every xdist worker) holding the prepared synthetic datasets."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return str(root / "nnunet_cache")


@pytest.fixture
def nnunet_env(e2e_cache, tmp_path):
    """Environment for nnU-Net subprocesses: shared raw/preprocessed, a results folder of this test's own,
    seeded reproducible trainings (see nnunet_e2e.TRAINING_ENV)."""
    return base_env(e2e_cache, results=str(tmp_path / "results"), training=True)


@pytest.fixture(scope="session")
def prepared(e2e_cache):
    """``prepared("3d_multiclass")`` -> dataset name, planned and preprocessed (once per session)."""
    return lambda key: prepare_dataset(e2e_cache, key)
