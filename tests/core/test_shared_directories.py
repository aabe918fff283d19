"""`require_shared_directories` in a real two-process gloo group: ranks that see rank 0's token pass (and the token
is gone afterwards); a rank whose directory is another disk at the same name stops every rank with one message."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed
import torch.multiprocessing

from xmodal.core.distributed import SHARED_CHECK_PREFIX, require_shared_directories
from xmodal.core.errors import ConfigError


def _check_on_rank(rank: int, store: str, cases: list[list[dict]], results: str) -> None:
    """Run each case (its directories for rank 0 and rank 1) in one process group; write this rank's outcomes."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    outcomes = []
    for directories_by_rank in cases:
        try:
            require_shared_directories(directories_by_rank[rank])
            outcomes.append("ok")
        except ConfigError as error:
            outcomes.append(str(error))
    torch.distributed.destroy_process_group()
    Path(results, f"rank{rank}").write_text("\n".join(outcomes))


def _outcomes(tmp_path, cases: list[list[dict]]) -> list[list[str]]:
    """Per case, [rank 0's outcome, rank 1's]."""
    torch.multiprocessing.spawn(_check_on_rank, args=(str(tmp_path / "store"), cases, str(tmp_path)), nprocs=2)
    by_rank = [(tmp_path / f"rank{rank}").read_text().split("\n") for rank in (0, 1)]
    return [list(case) for case in zip(*by_rank)]


def test_a_directory_one_node_does_not_see_stops_every_rank_and_a_shared_one_passes(tmp_path):
    shared, cache, local = tmp_path / "shared", tmp_path / "cache", tmp_path / "node1-local"
    local.mkdir()
    same = {"output_dir": str(shared), "cache_dir (XMODAL_CACHE)": str(cache)}
    # rank 1's "output_dir" is another directory: a node-local disk mounted where rank 0's shared one is.
    other = {"output_dir": str(local), "cache_dir (XMODAL_CACHE)": str(cache)}
    split_outcomes, same_outcomes = _outcomes(tmp_path, [[same, other], [same, same]])
    expected = (
        f"output_dir={shared}: not on a filesystem every node sees (rank 1 on {os.uname().nodename} cannot read "
        "the file rank 0 wrote there; 1 of 2 ranks): put them on a shared filesystem (docs/cluster.md)"
    )
    assert split_outcomes == [expected, expected.replace(f"output_dir={shared}", f"output_dir={local}")]
    assert same_outcomes == ["ok", "ok"]
    assert not [path for path in (*shared.iterdir(), *cache.iterdir()) if path.name.startswith(SHARED_CHECK_PREFIX)]
