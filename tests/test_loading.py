"""Loading (strict, both layouts, Hub resolution) and the converter."""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import checkpoints
import mlx.core as mx
import numpy as np
import pytest

import lfm2_mlx
from lfm2_mlx.convert import convert
from lfm2_mlx.errors import ConfigError, OutputError
from lfm2_mlx.generate import generate_tokens
from lfm2_mlx.loading import CheckpointError, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    return checkpoints.build(checkpoints.load_manifest("core_asr"), tmp_path / "ckpt")


def edit_weights(folder: Path, edit) -> None:
    w = {
        k: np.array(v.astype(mx.float32)) if v.dtype == mx.bfloat16 else np.array(v)
        for k, v in mx.load(str(folder / "model.safetensors")).items()
    }
    edit(w)
    checkpoints.save_safetensors(folder / "model.safetensors", w)


def prefill_logits(m) -> np.ndarray:
    chat = m.new_chat("Perform ASR.")
    m.user_turn(chat, audio=(checkpoints.clip(0.6, seed=3), 16000))
    return np.array(m.model.text_logits(m.model(m.model.embed_chat(chat)))[0].astype(mx.float32))


def test_missing_tensor_is_named(folder):
    edit_weights(folder, lambda w: w.pop("lfm.layers.2.self_attn.q_proj.weight"))
    with pytest.raises(CheckpointError, match=r"lfm\.layers\.2\.self_attn\.q_proj\.weight"):
        lfm2_mlx.load(folder)


def test_unexpected_tensor_is_named(folder):
    edit_weights(folder, lambda w: w.__setitem__("lfm.layers.0.surprise", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"lfm\.layers\.0\.surprise"):
        lfm2_mlx.load(folder)


def test_misshaped_tensor_is_named(folder):
    edit_weights(folder, lambda w: w.__setitem__("depth_linear.bias", np.zeros(5, np.float32)))
    with pytest.raises(CheckpointError, match=r"depth_linear\.bias"):
        lfm2_mlx.load(folder)


def test_conv_weight_is_not_shape_guessed(folder):
    # An HF-layout file whose conv weight is already channels-last is wrong: no guessing it right.
    def to_channels_last(w):
        k = "lfm.layers.0.conv.conv.weight"
        w[k] = np.ascontiguousarray(w[k].transpose(0, 2, 1))

    edit_weights(folder, to_channels_last)
    with pytest.raises(CheckpointError, match=r"lfm\.layers\.0\.conv\.conv\.weight"):
        lfm2_mlx.load(folder)


def test_training_buffers_and_unused_heads_are_dropped_by_name(folder):
    # Real checkpoints may store the derived buffers; the tied depth heads may appear under
    # `to_logits`; none of that changes the model.
    before = prefill_logits(lfm2_mlx.load(folder, dtype="float32"))

    def add(w):
        w["codebook_offsets"] = np.arange(8, dtype=np.int64) * 2049
        w["audio_loss_weights"] = np.ones(8, np.float32)
        w["depth_embeddings.3.to_logits.weight"] = w.pop("depth_embeddings.3.embedding.weight")

    edit_weights(folder, add)
    np.testing.assert_array_equal(prefill_logits(lfm2_mlx.load(folder, dtype="float32")), before)


@pytest.mark.parametrize(
    "section,key",
    [("", "codebooks"), ("depthformer", "dim"), ("encoder", "n_heads"), ("preprocessor", "n_fft")],
)
def test_missing_config_key_is_named(folder, section, key):
    cfg = json.loads((folder / "config.json").read_text())
    (cfg[section] if section else cfg).pop(key)
    (folder / "config.json").write_text(json.dumps(cfg))
    # A ConfigError is a ValueError and a CheckpointError: the CLI reports it as one line, exit 1.
    with pytest.raises(ConfigError, match=f"'{key}'"):
        lfm2_mlx.load(folder)


def test_unknown_config_keys_are_ignored(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["something_new"] = 1
    cfg["lfm"]["another"] = [1, 2]
    cfg["depthformer"]["extra"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    lfm2_mlx.load(folder)


def test_stored_dtype_is_kept_everywhere(folder):
    from mlx.utils import tree_flatten

    def dtypes(m):
        return {v.dtype for _, v in tree_flatten(m.model.parameters())}

    # Stored bf16, asked bf16: no silent cast to float32 or float16 anywhere.
    assert dtypes(lfm2_mlx.load(folder, dtype="bfloat16")) == {mx.bfloat16}
    # Nothing asked: as stored on a GPU; on a CPU all float32, said in a note (lfm2_mlx/device.py).
    m = lfm2_mlx.load(folder)
    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    assert dtypes(m) == {mx.float32 if on_cpu else mx.bfloat16}
    assert bool(m.notes) == on_cpu


def test_missing_model_without_network_says_how_to_get_it(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = "import lfm2_mlx; lfm2_mlx.load('LiquidAI/LFM2.5-Audio-1.5B')"
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert "HF_HUB_OFFLINE" in r.stderr and "--local-dir" in r.stderr


def test_resolve_rejects_missing_local_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        resolve(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not found"):
        resolve("./relative/nope")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_converted_folder_reproduces_the_original_exactly(tmp_path, dtype):
    src = checkpoints.build_full("core_chat", tmp_path / "src")
    out = convert(src, tmp_path / "mlx", dtype=dtype, log=lambda m: None)
    assert json.loads((out / "config.json").read_text())["lfm2_mlx"]["dtype"] == dtype
    for f in ("tokenizer.json", "tokenizer_config.json", "audio_detokenizer/model.safetensors"):
        assert (out / f).is_file()
    a, b = lfm2_mlx.load(src, dtype=dtype), lfm2_mlx.load(out)
    np.testing.assert_array_equal(prefill_logits(a), prefill_logits(b))
    chat = a.new_chat("Respond with interleaved text and audio.")
    a.user_turn(chat, audio=(checkpoints.clip(1.0, seed=4), 16000))
    kw = {"mode": "interleaved", "max_new_tokens": 30}
    assert generate_tokens(a.model, chat, **kw) == generate_tokens(b.model, chat, **kw)


def test_convert_refuses_existing_output_and_leaves_nothing_on_failure(folder, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputError, match="already exists"):
        convert(folder, out, log=lambda m: None)
    # A failure half way (here: the tokenizer file is unreadable as a directory copy target)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "tokenizer.json").unlink()
    (bad / "tokenizer.json").symlink_to(bad / "missing-target")
    with pytest.raises(OSError):
        convert(bad, tmp_path / "new" / "out", log=lambda m: None)
    assert not (tmp_path / "new").exists()  # nor the parent folder made for it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_convert_checks_the_output_before_loading(folder, tmp_path, monkeypatch):
    import lfm2_mlx.convert

    monkeypatch.setattr(lfm2_mlx.convert, "load_model", lambda *a: pytest.fail("loaded before checking"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a folder"):
        convert(folder, tmp_path / "file" / "out")


def test_convert_script_shim(folder, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "convert.py"),
            str(folder),
            "-o",
            str(tmp_path / "o"),
            "--dtype",
            "float16",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert lfm2_mlx.load(tmp_path / "o").model.dtype == mx.float16
    r = subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), str(folder), "-o", str(tmp_path / "o")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr


# ---- defects of issue 9 ----------------------------------------------------------------------------
def shipped_commands(dist: str) -> set:
    return {
        e.name for e in importlib.metadata.distribution(dist).entry_points if e.group == "console_scripts"
    }


def test_offline_advice_names_a_command_huggingface_hub_ships(monkeypatch):
    # huggingface_hub 1.x ships `hf` only; `huggingface-cli` is gone, so advising it sends users nowhere.
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(CheckpointError) as e:
        resolve("LiquidAI/LFM2.5-Audio-1.5B")
    advice = re.search(r"`(\S+) download LiquidAI/LFM2\.5-Audio-1\.5B --local-dir DIR`", str(e.value))
    assert advice and advice.group(1) in shipped_commands("huggingface_hub"), str(e.value)


def test_readme_names_a_download_command_huggingface_hub_ships():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"`(\S+) download LiquidAI/", readme)
    assert commands and set(commands) <= shipped_commands("huggingface_hub"), commands


def truncate(f: Path, size: int) -> None:
    f.write_bytes(f.read_bytes()[:size])


# Sizes: empty, inside the header, half the data (what an interrupted download leaves).
@pytest.mark.parametrize("size", [0, 100, -1])
def test_truncated_weights_are_a_checkpoint_error_naming_the_file(folder, size):
    f = folder / "model.safetensors"
    truncate(f, f.stat().st_size // 2 if size < 0 else size)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        lfm2_mlx.load(folder)


@pytest.mark.parametrize("entry", [["convert.py"], ["-m", "lfm2_mlx", "convert"]])
def test_convert_of_truncated_weights_is_one_line_and_writes_nothing(folder, tmp_path, entry):
    f = folder / "model.safetensors"
    truncate(f, f.stat().st_size // 2)
    out = tmp_path / "new" / "out"
    r = subprocess.run(
        [sys.executable, *entry, str(folder), "-o", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lfm2-audio: error: ")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (
        len(errors) == 1 and f"{f} is not a readable safetensors file (truncated or corrupt" in errors[0]
    ), r.stderr
    assert not (tmp_path / "new").exists()


def test_convert_accepts_the_mlx_lm_spelling(folder, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "convert.py"),
            "--hf-path",
            str(folder),
            "--mlx-path",
            str(tmp_path / "o"),
            "--dtype",
            "float32",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "o")
    assert lfm2_mlx.load(tmp_path / "o").model.dtype == mx.float32


@pytest.mark.parametrize("source", [[], ["SRC", "--hf-path", "SRC2"]])
def test_convert_needs_exactly_one_source(capsys, tmp_path, source):
    from lfm2_mlx import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["convert", *source, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert re.search(r"^lfm2-audio convert: error: .*SRC.*--hf-path", err, re.MULTILINE), err
    assert not (tmp_path / "o").exists()


def test_convert_help_is_complete(capsys):
    import inspect

    from lfm2_mlx.cli.convert import build_parser, main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: lfm2-audio convert")
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.dest
        assert all(flag in out for flag in action.option_strings), action.option_strings
    # One flag per keyword argument of the library function (`skip` is for tools/quant_report.py).
    keywords = set(inspect.signature(convert).parameters) - {"src", "dst", "skip", "log"}
    assert keywords <= {a.dest for a in parser._actions}
    # The README's examples are valid invocations.
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Converting and quantizing") :].split("\n## ")[0]
    examples = re.findall(
        r"^(?:lfm2-audio convert|python convert\.py) (.+?)(?:\s+#.*)?$", section, re.MULTILINE
    )
    assert examples
    for example in examples:
        if example != "...":
            parser.parse_args(example.split())


@pytest.mark.parametrize("signum", [None, "SIGTERM"])
def test_convert_interrupted_writes_nothing(folder, tmp_path, capsys, monkeypatch, signum):
    import os
    import signal

    import lfm2_mlx.convert
    from lfm2_mlx.cli.convert import main

    def stop(*args, **kwargs):
        if signum:
            os.kill(os.getpid(), getattr(signal, signum))
        raise KeyboardInterrupt

    monkeypatch.setattr(lfm2_mlx.convert.shutil, "copy2", stop)  # half way through writing
    rc = main([str(folder), "-o", str(tmp_path / "new" / "out")])
    err = capsys.readouterr().err
    assert rc == (143 if signum else 130)
    assert err.splitlines()[-1].endswith("; nothing was written"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
