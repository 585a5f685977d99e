"""lfm2_mlx.transcribe.corpus: the plan (share, todo, total) and a real two-rank `mlx.launch` run
over loopback with the ring backend (tests/corpus_worker.py)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_mlx.errors import InputError, LFM2AudioError
from lfm2_mlx.transcribe import corpus
from lfm2_mlx.transcribe.corpus import DistributedError, Ranks, ranks, share, todo, total

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "corpus_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
import corpus_worker

LAUNCHER_VARS = (
    "MLX_RANK",
    "MLX_HOSTFILE",
    "MLX_WORLD_SIZE",
    "NCCL_HOST_IP",
    "NCCL_PORT",
    "MLX_IBV_DEVICES",
    "MLX_JACCL_COORDINATOR",
    *corpus._MPI_SIZE,
)


# share ------------------------------------------------------------------------------------------


def _assignment(weights, size):
    return [share(weights, weights, r, size) for r in range(size)]


def test_share_complete_disjoint_sorted_and_deterministic():
    rng = random.Random(7)
    for n in (0, 1, 2, 5, 17, 100):
        weights = [round(rng.uniform(0, 600), 2) for _ in range(n)]
        for size in (1, 2, 3, 4, 7):
            parts = _assignment(weights, size)
            flat = [i for p in parts for i in p]
            assert sorted(flat) == list(range(n))  # every index exactly once
            assert all(p == sorted(p) for p in parts)  # input order
            assert parts == _assignment(list(weights), size)  # same list, same plan


def test_share_balanced_by_weight():
    rng = random.Random(3)
    for _ in range(50):
        weights = [rng.uniform(1, 900) for _ in range(rng.randint(1, 60))]
        for size in (2, 3, 5):
            loads = [sum(weights[i] for i in p) for p in _assignment(weights, size)]
            # longest first greedy: the spread never exceeds the longest item
            assert max(loads) - min(loads) <= max(weights) + 1e-9
    # a known case, longest first: 5 -> r0, 4 -> r1, 3 -> r1 (7), 3 -> r0 (8), 3 -> r1 (10)
    assert _assignment([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    # one long file and many short ones: 4 -> r0, four 1s -> r1 (4), the tie to r0 (fewer items), ...
    assert _assignment([1, 1, 1, 1, 4, 1, 1], 2) == [[4, 5], [0, 1, 2, 3, 6]]


def test_share_ties_by_index_and_rank():
    assert _assignment([1.0] * 7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert _assignment([0.0] * 5, 2) == [[0, 2, 4], [1, 3]]  # unknown durations spread too
    # equal loads: the rank with fewer items takes the next one
    assert _assignment([2, 1, 1, 0, 0], 3) == [[0], [1, 3], [2, 4]]


def test_share_size_one_and_more_ranks_than_items():
    assert share(["a", "b", "c"], [3, 1, 2], 0, 1) == [0, 1, 2]
    assert _assignment([2.0, 1.0], 4) == [[0], [1], [], []]
    assert share([], [], 0, 3) == []


@pytest.mark.parametrize(
    "items, weights, rank, size",
    [
        (["a", "b"], [1.0], 0, 1),
        (["a"], [1.0], 1, 1),
        (["a"], [1.0], -1, 2),
        (["a"], [1.0], 0, 0),
        (["a"], [-1.0], 0, 1),
        (["a"], [float("nan")], 0, 1),
        (["a"], [float("inf")], 0, 1),
    ],
)
def test_share_rejects(items, weights, rank, size):
    with pytest.raises(InputError):
        share(items, weights, rank, size)


# todo -------------------------------------------------------------------------------------------


def test_todo_existing_empty_missing(tmp_path):
    (tmp_path / "full.txt").write_text("hello")
    (tmp_path / "full.json").write_text("{}")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "half.txt").write_text("hello")
    (tmp_path / "folder.txt").mkdir()
    outputs = {
        0: ["full.txt", "full.json"],  # done
        1: ["empty.txt"],  # empty: redo
        2: ["missing.txt"],  # missing: do
        3: ["half.txt", "half.json"],  # one of two missing: redo
        4: [],  # no outputs (stdout): always do
        5: ["folder.txt"],  # not a file
        6: ["full.txt"],  # done
    }
    got = todo([6, 0, 1, 2, 3, 4, 5], lambda i: [tmp_path / p for p in outputs[i]])
    assert got == ([1, 2, 3, 4, 5], [6, 0])
    assert todo([], lambda i: []) == ([], [])


# ranks and total outside a launcher -------------------------------------------------------------


def test_ranks_outside_a_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    assert ranks() == Ranks(0, 1, None)


def test_ranks_single_process_launch_runs_alone(monkeypatch, tmp_path):
    # `mlx.launch -n 1` (ring) writes an empty hostfile, which the ring cannot initialise from
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("\n")
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert ranks() == Ranks(0, 1, None)


def test_ranks_bad_launch_is_one_line_error(monkeypatch, tmp_path):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("not json")
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    with pytest.raises(DistributedError) as e:
        ranks()
    assert isinstance(e.value, LFM2AudioError)
    message = str(e.value)
    assert "\n" not in message and "ring" in message and "MLX_RANK=0" in message


def test_total_without_group_is_unchanged():
    counts = {"items": 3, "seconds": 12.5}
    got = total(None, counts)
    assert got == counts and got is not counts


# mlx.launch -------------------------------------------------------------------------------------


def _mlx_launch() -> str:
    found = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    assert found, "mlx.launch is not installed next to this Python (pip install mlx)"
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free: the ring listens on one per rank. Chosen below Linux's ephemeral
    range (32768 and up), where an outgoing connection could take one before the ring binds it."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, 32000)
        if all(_bindable(p + k) for k in range(n)):
            return p
    raise AssertionError("no free ports on 127.0.0.1")


def _launch(out: Path, n: int = 2, env: dict | None = None, timeout: float = 60) -> tuple[int, str, str]:
    extra = [a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")]
    cmd = [_mlx_launch(), "-n", str(n), "--starting-port", str(_free_ports(n)), *extra, "--"]
    cmd += [sys.executable, str(WORKER), str(out)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so a hung launch is killed whole
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return proc.returncode, stdout, stderr


def _parse(stdout: str) -> tuple[dict[int, dict], list[dict]]:
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    did = {d["did"]: d for d in lines if "did" in d}
    return did, [d["totals"] for d in lines if "totals" in d]


ITEMS, WEIGHTS = corpus_worker.ITEMS, corpus_worker.WEIGHTS
FULL = {"items": len(ITEMS), "seconds": sum(WEIGHTS), "skipped": 0, "ranks": 2}


def test_two_ranks_over_loopback_then_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    rc, stdout, stderr = _launch(out)
    assert rc == 0 and "exited with code" not in stderr, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    did, totals = _parse(stdout)
    assert sorted(did) == [0, 1], stdout  # both ranks ran
    assert all(d["size"] == 2 for d in did.values())
    for r, d in did.items():
        assert d["mine"] == share(ITEMS, WEIGHTS, r, 2)  # the plan every rank computes
        assert d["done"] == d["mine"] and d["done"]
    assert totals == [FULL], stdout  # once, from rank 0, summed over both
    # every item's output exactly once, written by the rank that owns it; nothing else left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{x}.txt" for x in ITEMS)
    for r, d in did.items():
        for i in d["mine"]:
            assert (out / f"{ITEMS[i]}.txt").read_text() == f"rank {r}\n"

    rc, stdout, stderr = _launch(out)  # resume: everything is there
    assert rc == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    did, totals = _parse(stdout)
    assert sorted(did) == [0, 1] and all(d["done"] == [] for d in did.values())
    assert totals == [{"items": 0, "seconds": 0.0, "skipped": len(ITEMS), "ranks": 2}]

    (out / f"{ITEMS[3]}.txt").unlink()  # resume after a loss and an empty file: those two only
    (out / f"{ITEMS[8]}.txt").write_text("")
    rc, stdout, stderr = _launch(out)
    assert rc == 0 and "exited with code" not in stderr, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    did, totals = _parse(stdout)
    assert sorted(i for d in did.values() for i in d["done"]) == [3, 8]
    assert totals == [{"items": 2, "seconds": WEIGHTS[3] + WEIGHTS[8], "skipped": len(ITEMS) - 2, "ranks": 2}]


def test_single_process_launch(tmp_path):
    rc, stdout, stderr = _launch(tmp_path, n=1)
    assert rc == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    did, totals = _parse(stdout)
    assert list(did) == [0] and did[0]["size"] == 1 and did[0]["done"] == list(range(len(ITEMS)))
    assert totals == [FULL | {"ranks": 1}]


def test_ranks_with_different_keys_fail(tmp_path):
    _, stdout, stderr = _launch(tmp_path, env={"CORPUS_WORKER_SKEW": "1"})
    # mlx.launch (0.32.4) exits 0 even when a rank fails; it only warns on stderr
    assert "exited with code 1" in stderr, stderr
    assert "DistributedError" in stderr and "keys differ" in stderr, stderr
    assert _parse(stdout)[1] == []
