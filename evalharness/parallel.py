"""Data-parallel sharding of the evaluation grid across processes started by `torchrun` or
`accelerate launch` (both set RANK / WORLD_SIZE / LOCAL_RANK).

Each rank takes every world-th cell of the (document, method) grid in a fixed order, writes its
rows to `OUT/shards/rank<r>/`, and after a barrier rank 0 merges the shards into `OUT/` and
re-aggregates. Resuming works per cell as in a single process: a rank skips cells already in
`OUT/` or in its own shard. The process group is torch.distributed's (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .results import CELL_COLUMNS, Manifest, ResultStore


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def owns(self, cell_index: int) -> bool:
        return cell_index % self.world == self.rank


def shard_from_env() -> Shard:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def shard_dir(out: Path, rank: int) -> Path:
    return Path(out) / "shards" / f"rank{rank}"


def init_process_group(shard: Shard) -> None:
    if shard.active and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(shard.local_rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard.world))
        dist.init_process_group(backend)


def barrier(shard: Shard) -> None:
    if shard.active and dist.is_initialized():
        dist.barrier()


def shutdown(shard: Shard) -> None:
    if shard.active and dist.is_initialized():
        dist.destroy_process_group()


def merge_shards(out: Path, world: int, store, manifest, tables=None) -> None:
    """Rank 0, after the barrier: move every shard's rows of `tables` (default: every table whose
    rows a cell writes, `results.CELL_COLUMNS`) and cell statuses into `out`, holding the folder's
    lock (shards share it) so nothing is written into a shard while it is merged."""
    tables = tuple(CELL_COLUMNS) if tables is None else tables

    with store.locked():
        for rank in range(world):
            folder = shard_dir(out, rank)
            if not folder.exists():
                continue
            shard_store = ResultStore(folder, lock_dir=store.lock_dir)
            for table in tables:
                if shard_store.path(table).exists():
                    store.append(table, shard_store.read(table).to_dict("records"))
            cells = Manifest(folder, lock_dir=store.lock_dir).data["cells"]
            manifest.merge_cells({name: dict(cell, rank=rank) for name, cell in cells.items()})
            shutil.rmtree(folder)
        shards = Path(out) / "shards"
        if shards.exists() and not any(shards.iterdir()):
            shards.rmdir()
