import os
import shutil

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


_FAILED_MODULES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _FAILED_MODULES.add(item.module.__name__)
    return report


@pytest.fixture(autouse=True, scope="module")
def _module_folders_removed(request, tmp_path_factory):
    """Module-scoped tiny checkpoints take 0.1-0.3 GB a folder: they are removed with their module (kept if a
    test of the module failed), so a full run stays near 1 GB on disk instead of 5-6 GB."""
    root = tmp_path_factory.getbasetemp()
    before = set(root.iterdir())
    yield
    if request.module.__name__ not in _FAILED_MODULES:
        for path in set(root.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
