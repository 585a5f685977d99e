"""A stand-in for `lfm2-audio transcribe` under `mlx.launch`, for tests/test_corpus.py.

    mlx.launch -n 2 -- python tests/corpus_worker.py OUT_DIR

Each rank takes its share of ITEMS (by weight), skips those whose output exists, writes one file
per item it does (exclusive create: an item done twice fails), prints one `did` line, and rank 0
prints the totals as a `totals` JSON line. With CORPUS_WORKER_SKEW=1, rank 1 reports a different key."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfm2_mlx.transcribe.corpus import ranks, share, todo, total

ITEMS = [f"clip{i:02d}" for i in range(11)]
WEIGHTS = [30.0, 5.5, 12.25, 60.0, 1.0, 7.75, 12.25, 45.5, 3.0, 20.0, 0.5]


def main(out: Path) -> None:
    me = ranks()
    mine = share(ITEMS, WEIGHTS, me.rank, me.size)
    pending, done = todo(mine, lambda i: [out / f"{ITEMS[i]}.txt"])
    for i in pending:
        path = out / f"{ITEMS[i]}.txt"
        if path.exists() and path.stat().st_size == 0:
            path.unlink()  # an empty output counts as missing
        with open(path, "x", encoding="utf-8") as f:
            f.write(f"rank {me.rank}\n")
    print(json.dumps({"did": me.rank, "size": me.size, "mine": mine, "done": pending}), flush=True)
    counts = {
        "items": len(pending),
        "seconds": sum(WEIGHTS[i] for i in pending),
        "skipped": len(done),
        "ranks": 1,
    }
    if os.environ.get("CORPUS_WORKER_SKEW") and me.rank == 1:  # a rank that reports other keys
        counts["rankz"] = counts.pop("ranks")
    totals = total(me.group, counts)
    if me.rank == 0:
        print(json.dumps({"totals": totals}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
