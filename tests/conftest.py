"""Fixtures shared by every test directory, and the settings of a parallel run (`pytest -n 2`)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Every torchrun a test starts binds its own free rendezvous port (PET_STANDALONE is torchrun's --standalone:
    its agent binds port 0 and the ranks use the agent's store), so no two runs, workers or sessions share one.
    Under pytest-xdist each worker is one process of N on the machine: one thread each (N workers x 2 threads
    would oversubscribe the cores)."""
    os.environ["PET_STANDALONE"] = "1"
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # gw0, gw1, ... under xdist
        return
    import torch

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests first (the order within a file kept): under `-n 2 --dist loadfile` workers take
    files in this order, so the long ones start early instead of leaving one worker alone with them at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in slow_files, _LONGEST_FILES.get(item.path.name, len(_LONGEST_FILES))))


# The files that took minutes on one worker, longest first, as measured with --durations before the suite-time
# work of 6 December 2026 (the README test is now the longest; re-derive the order from a CI log's durations):
# started first, they end together with the rest instead of alone at the end.
_LONGEST_FILES = {
    name: rank
    for rank, name in enumerate(
        ["test_reproduce.py", "test_multinode.py", "test_slurm.py", "test_kill_anywhere.py", "test_readme_commands.py"]
    )
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One cache for the whole run, so tiny models (the pretrained base: a minute) and rendered images are built
    once: under xdist the workers' base temporary directories are siblings, and the cache sits beside them. Every
    cache entry is published atomically, so two workers building the same one at once both end up reading it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        root = root.parent
    path = root / "xmodal-cache"
    path.mkdir(exist_ok=True)
    os.environ["XMODAL_CACHE"] = str(path)
    return str(path)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Entry points run in-process export their logger's variables; no test leaks them into the next one."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
