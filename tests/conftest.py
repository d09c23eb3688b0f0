"""Test setup: everything offline, every cache in a temporary folder.

The suite never touches a model or data hub: HF_HUB_OFFLINE=1 is set before transformers or
datasets are imported, and models are tiny ones built in-process.

Shared test code: fixtures live here; plain functions and constants live in tests/helpers.py
(``from helpers import cli``).
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A private cache for the session unless the caller points at one (W2S_TEST_CACHE), so tests
# never read or corrupt a user's cache.
os.environ["W2S_CACHE"] = os.environ.get("W2S_TEST_CACHE") or tempfile.mkdtemp(prefix="w2s-cache-")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (still run by `make test`; "
                            "`make test-quick` leaves them out)")


LAUNCHING = {"test_distributed_methods.py", "test_train_sharded.py", "test_train_distributed.py"}
"""Test files that start several processes (torchrun, two CPU ranks): slow by nature."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in LAUNCHING:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (a module asks with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain nothing from
    threads, and spinning OpenMP threads on a busy 2-core CI machine make them several times
    slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def quiet_small_test_set():
    """No SmallTestSetWarning in the test (a module asks with ``pytest.mark.usefixtures``):
    its tiny runs evaluate on a handful of prompts on purpose."""
    import warnings

    from w2s.data import SmallTestSetWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTestSetWarning)
        yield


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty w2s cache for one test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("W2S_CACHE", str(d))
    return d
