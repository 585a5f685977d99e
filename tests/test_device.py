"""How the library computes: OpenBLAS under MLX's CPU backend on Linux (lfm2_mlx/blas.py), float32
by default for bf16 checkpoints on a CPU (lfm2_mlx/device.py), and `--version` saying so."""

import json
import os
import platform
import subprocess
import sys

import checkpoints
import mlx.core as mx
import pytest

import lfm2_mlx
from lfm2_mlx.weights import stored_float_dtype

PROBE = """
import json, sys
{first}
import lfm2_mlx, mlx.core as mx, numpy as np
from lfm2_mlx import blas
a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((200, 100)).astype(np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
print(json.dumps({{**blas.state, "err": err}}))
"""


def probe(first: str = "", **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the OpenBLAS wheel is a dependency on Linux x86_64 only",
)


@linux_x86
def test_openblas_is_loaded_before_mlx_and_computes_the_same():
    s = probe(LFM2_AUDIO_OPENBLAS="")
    assert s["library"] and "openblas" in s["library"].lower(), s
    assert s["err"] < 1e-3


def test_openblas_can_be_turned_off_or_missed():
    off = probe(LFM2_AUDIO_OPENBLAS="0")
    assert off["library"] is None and "LFM2_AUDIO_OPENBLAS" in off["reason"]
    late = probe(first="import mlx.core", LFM2_AUDIO_OPENBLAS="")
    assert late["library"] is None and "import lfm2_mlx first" in late["reason"]
    assert off["err"] < 1e-3 and late["err"] < 1e-3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoints.build(checkpoints.load_manifest("core_asr"), tmp_path_factory.mktemp("dev"))


def test_bf16_checkpoint_computes_in_float32_on_the_cpu(folder):
    assert stored_float_dtype(folder / "model.safetensors") == "BF16"
    assert stored_float_dtype(folder / "missing.safetensors") is None
    default = lfm2_mlx.load(folder)
    kept = lfm2_mlx.load(folder, dtype="bfloat16")
    if mx.default_device().type == mx.DeviceType.cpu:
        assert default.model.lfm.embed_tokens.weight.dtype == mx.float32
        assert (
            len(default.notes) == 1
            and "float32" in default.notes[0]
            and "--dtype bfloat16" in default.notes[0]
        )
    else:  # a GPU keeps what the checkpoint stores
        assert default.model.lfm.embed_tokens.weight.dtype == mx.bfloat16 and not default.notes
    assert kept.model.lfm.embed_tokens.weight.dtype == mx.bfloat16 and not kept.notes


def test_version_reports_mlx_device_blas_and_dtype():
    out = subprocess.run(
        [sys.executable, "-m", "lfm2_mlx", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0] == f"lfm2-audio {lfm2_mlx.__version__}"
    assert lines[1] == f"mlx {mx.__version__}"
    assert [line.split(":")[0] for line in lines[2:]] == ["device", "blas", "default dtype"]
