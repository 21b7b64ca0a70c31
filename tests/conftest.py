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


@pytest.fixture
def raw(tmp_path, monkeypatch):
    """A fresh ``nnUNet_raw`` (not created yet) for converter tests, with ``nnUNet_preprocessed`` unset."""
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    return tmp_path / "raw"


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """Small sources of every converter, made once: brats/, promise/, podo/ (H-AI-L tiles), podo_rgb/
    (colour-coded masks). Tests that change a file work on a copy."""
    from dataset_fixtures import make_brats15, make_podocyte, make_promise12

    root = tmp_path_factory.mktemp("pristine")
    make_brats15(str(root / "brats"), n_hgg=2, n_lgg=1, n_test=1, shape=(8, 12, 12))
    make_promise12(str(root / "promise"), per_part=(1, 1, 1), n_test=1)
    make_podocyte(str(root / "podo"), "hail", n_train=2, n_test=1, size=16)
    make_podocyte(str(root / "podo_rgb"), "rgb", n_train=2, n_test=0, size=16)
    return root


def pytest_collection_modifyitems(config, items):
    """The slow tests (marked ``e2e``: they train, or start other processes) first, in their files' order: two xdist
    workers then share them from the start instead of one finishing a long test after the other ran out of work."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") else 1)
    config.stash[_NEEDS_DATASETS] = any("prepared" in getattr(item, "fixturenames", ()) for item in items)


_NEEDS_DATASETS = pytest.StashKey[bool]()
# the order in which the workers take their share: the datasets the first tests need first
_PREPARE_ORDER = ("2d_multiclass", "3d_multiclass", "3d_regions", "3d_ignore")


@pytest.fixture(scope="session", autouse=True)
def datasets_shared_out(request, e2e_cache):
    """Under xdist, each worker first prepares its share of the end-to-end datasets, so the workers plan them side
    by side instead of one waiting on the lock of a dataset the other is planning (it did for about a minute)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not request.config.stash.get(_NEEDS_DATASETS, False):
        return
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for key in _PREPARE_ORDER[int(worker[2:]) % count::count]:
        prepare_dataset(e2e_cache, key)
