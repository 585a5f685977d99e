"""Corpus-scale transcription over several processes or Macs, started by `mlx.launch`.

Every rank receives the same argument list (the launching shell expands the glob once), so every
rank can compute the same plan without talking to the others: `share` deals the files out by
duration, longest first, each to the rank with the least audio so far (ties to the rank with fewer
files, then the lower rank; equal durations in list order), and each rank keeps its own share.
`todo` then drops the files whose outputs already exist and are non-empty: outputs are written
atomically (`lfm2_mlx.files`), so such a file is complete, and an interrupted run resumes where it
stopped. At the end `total` sums every
rank's counts with one `all_sum`, and rank 0 reports them. The only collectives are the
initialisation and that sum, so ranks never wait on each other while they transcribe.

One machine, two processes (ring backend over loopback, ports 32323 and up; `-p` picks others):

    mlx.launch -n 2 -- lfm2-audio transcribe --output-dir out/ corpus/*.flac

Several Macs: a hostfile listing, for each rank, the host to ssh into and the IPs the ring uses

    [
      {"ssh": "mac-1.local", "ips": ["192.168.1.11"]},
      {"ssh": "mac-2.local", "ips": ["192.168.1.12"]}
    ]

    mlx.launch --hostfile hosts.json --backend ring -- lfm2-audio transcribe --output-dir out/ corpus/*.flac

(`mlx.distributed_config --hosts mac-1.local,mac-2.local --over ethernet --output-hostfile hosts.json`
writes one.) Each Mac must see the files at the same paths (a shared volume or identical copies)
and the same environment (`lfm2-audio` on the PATH that ssh gives; `--cwd` sets the folder). With a
shared output folder a resumed run may use any number of ranks; with per-machine output folders it
must use the same hosts and list, so that every file goes back to the rank that holds its outputs.
`mlx.launch` (0.32.4) exits 0 even when a rank fails and only warns ("Node with rank N exited with
code 1") on stderr, and stops the other ranks: look for that line, then rerun to resume."""

from __future__ import annotations

import heapq
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlx.core as mx
import numpy as np

from ..errors import InputError, LFM2AudioError

T = TypeVar("T")

# What `mlx.launch` (mlx/_distributed_utils/launch.py) sets, by backend: ring MLX_RANK and MLX_HOSTFILE
# (an empty file when there is a single host); jaccl MLX_RANK, MLX_IBV_DEVICES and MLX_JACCL_COORDINATOR;
# nccl MLX_RANK, MLX_WORLD_SIZE, NCCL_HOST_IP and NCCL_PORT; mpi runs `mpirun`, which sets its own.
_MPI_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # Open MPI, MPICH (Hydra)


class DistributedError(LFM2AudioError, RuntimeError):
    """A launcher started this process but its communication group cannot be joined."""


@dataclass
class Ranks:
    """This process's place among those launched: `group` is the `mx.distributed.Group` for
    `total`, or None when the process runs alone."""

    rank: int
    size: int
    group: object | None


def _launcher(env: Mapping[str, str]) -> tuple[str, bool] | None:
    """(backend, alone) for the launcher that started this process, or None without one."""
    if "MLX_IBV_DEVICES" in env or "MLX_JACCL_COORDINATOR" in env:
        return "jaccl", False
    if "MLX_WORLD_SIZE" in env or "NCCL_HOST_IP" in env:
        return "nccl", env.get("MLX_WORLD_SIZE", "").strip() == "1"
    if "MLX_HOSTFILE" in env:
        try:
            alone = not Path(env["MLX_HOSTFILE"]).read_text().strip()
        except OSError:
            alone = False  # let the backend report the missing file
        return "ring", alone
    for name in _MPI_SIZE:
        if name in env:
            return "mpi", env[name].strip() == "1"
    if "MLX_RANK" in env:
        return "any", False
    return None


def ranks() -> Ranks:
    """This process's rank and the number of ranks: from `mx.distributed.init(strict=True)` under a
    launcher (the backend chosen from the variables it set), else `Ranks(0, 1, None)` without
    initialising anything. A launch of a single process (`mlx.launch -n 1`, whose ring hostfile is
    empty) also runs alone. Raises `DistributedError` when the group cannot be joined."""
    found = _launcher(os.environ)
    if found is None or found[1]:
        return Ranks(0, 1, None)
    backend = found[0]
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except (RuntimeError, ValueError, OSError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        where = f", MLX_RANK={os.environ['MLX_RANK']}" if "MLX_RANK" in os.environ else ""
        raise DistributedError(f"cannot join the launched group ({backend}{where}): {detail}") from None
    if group.size() == 1:
        return Ranks(0, 1, None)
    return Ranks(group.rank(), group.size(), group)


def share(items: Sequence[T], weights: Sequence[float], rank: int, size: int) -> list[int]:
    """The indices of `items` that `rank` of `size` takes, in input order. Items are dealt longest
    first (equal weights in index order) to the rank with the least weight so far (ties to the rank
    with fewer items, then the lower rank, so that zero weights spread too): deterministic, so every
    rank computes the same assignment from the same list, and every index goes to exactly one rank.
    `weights` are durations in seconds (or any non-negative cost)."""
    if len(weights) != len(items):
        raise InputError(f"{len(items)} items but {len(weights)} weights")
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"rank {rank} is not one of {size}")
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise InputError("weights must be finite and non-negative")
    loads = [(0.0, 0, r) for r in range(size)]  # a heap of (weight, items, rank): the next taker first
    mine = []
    for i in sorted(range(len(w)), key=lambda i: (-w[i], i)):
        load, n, r = loads[0]
        heapq.heapreplace(loads, (load + w[i], n + 1, r))
        if r == rank:
            mine.append(i)
    return sorted(mine)


def _complete(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def todo(indices: Sequence[int], outputs: Callable[[int], list[Path]]) -> tuple[list[int], list[int]]:
    """(todo, done) split of `indices`, both in input order: an item is done when every one of its
    `outputs(i)` exists and is non-empty (a resumed run skips it). An item with no outputs (text to
    stdout) is never done."""
    todo_, done = [], []
    for i in indices:
        paths = [Path(p) for p in outputs(i)]
        (done if paths and all(_complete(p) for p in paths) else todo_).append(i)
    return todo_, done


def total(group: object | None, counts: Mapping[str, float]) -> dict[str, float]:
    """The per-key sums of `counts` over all ranks (one `all_sum` of one array); with `group` None,
    `counts` unchanged. Every rank of the group must call it, with the same keys (their order does
    not matter): a different number of keys breaks the collective, and different names for the same
    number are caught (`DistributedError`)."""
    if group is None:
        return dict(counts)
    keys = sorted(counts)
    mark = zlib.crc32("\0".join(keys).encode()) & 0xFFF  # small enough to stay exact when summed
    values = np.array([float(counts[k]) for k in keys] + [mark], dtype=np.float64)
    if _launcher(os.environ) == ("nccl", False):  # NCCL sums on the GPU, which has no float64
        summed = mx.distributed.all_sum(mx.array(values, dtype=mx.float32), group=group)
    else:  # the ring, JACCL and MPI sum on the CPU, in float64
        summed = mx.distributed.all_sum(mx.array(values, dtype=mx.float64), group=group, stream=mx.cpu)
    out = np.array(summed, dtype=np.float64).tolist()
    if out[-1] != mark * group.size():
        raise DistributedError("the ranks reported different counts (keys differ)")
    return dict(zip(keys, out[:-1]))


__all__ = ["DistributedError", "Ranks", "ranks", "share", "todo", "total"]
