"""LFM2.5 detokenizer against liquid-audio 1.3.0 (fixture: tools/golden/detokenizer.py).

Streaming latency: decode_step holds back 480 samples (20 ms at 24 kHz). After n code frames the
steps have returned 1920 * n - 480 samples; flush returns the last 480 (checked below).
"""

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lfm2_mlx.detokenizer import Detokenizer, DetokenizerConfig, load_detokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "detokenizer"

# float32 throughout. Measured max abs error against the reference: 1.1e-6 on a waveform peaking
# at 0.29 (the exp of the log-magnitudes amplifies the matmul rounding).
ATOL_REFERENCE = 5e-6
# Streaming runs the same maths in other shapes; measured max abs error against decode: 3.0e-8.
ATOL_STREAM = 1e-6


def _golden_module():
    spec = importlib.util.spec_from_file_location("golden_detokenizer", ROOT / "tools/golden/detokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_checkpoint(folder: Path, weights: dict[str, np.ndarray]) -> Path:
    out = folder / "audio_detokenizer"
    out.mkdir(parents=True)
    shutil.copy(FIXTURE / "audio_detokenizer" / "config.json", out / "config.json")
    mx.save_safetensors(str(out / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    return folder


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    golden = _golden_module()
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    meta = json.loads((FIXTURE / "meta.json").read_text())
    weights = golden.random_checkpoint([(e["key"], e["shape"]) for e in manifest], meta["seed"])
    for e in manifest:
        got = golden.checksum(weights[e["key"]])
        assert got == pytest.approx(e["abs_sum"], rel=1e-9), f"numpy rebuilt {e['key']} differently"
    return weights


@pytest.fixture(scope="module")
def model(weights, tmp_path_factory) -> Detokenizer:
    return load_detokenizer(_write_checkpoint(tmp_path_factory.mktemp("ckpt"), weights))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "golden.npz"))


@pytest.fixture(scope="module")
def whole(model, golden) -> mx.array:
    wav = model.decode(mx.array(golden["codes"]))
    mx.eval(wav)
    return wav


def test_decode_matches_reference(whole, golden):
    assert whole.dtype == mx.float32
    assert whole.shape == golden["waveform"].shape == (2, 9 * 1920)
    np.testing.assert_allclose(np.array(whole), golden["waveform"], rtol=0, atol=ATOL_REFERENCE)


def test_attention_window_is_visible_in_fixture(model, golden):
    # 54 positions exceed the 30-position window, so a plain causal mask must miss the reference.
    wide = Detokenizer(replace(model.config, sliding_window=10_000))
    wide.load_weights(tree_flatten(model.parameters()))
    err = np.abs(np.array(wide.decode(mx.array(golden["codes"][:1]))) - golden["waveform"][:1]).max()
    assert err > 1000 * ATOL_REFERENCE


@pytest.mark.parametrize("chunks", [[1] * 9, [2, 2, 2, 2, 1], [5, 4], [3, 0, 1, 4, 1]])
def test_streaming_matches_decode(model, golden, whole, chunks):
    codes = mx.array(golden["codes"])
    cache = model.make_cache(batch=2)
    parts, start = [], 0
    for k in chunks:
        out = model.decode_step(codes[:, :, start : start + k], cache)
        start += k
        assert out.shape == (2, 1920 * start - 480 - sum(p.shape[1] for p in parts))
        parts.append(out)
    tail = model.flush(cache)
    assert tail.shape == (2, 480)
    streamed = np.array(mx.concatenate(parts + [tail], axis=1))
    np.testing.assert_allclose(streamed, np.array(whole), rtol=0, atol=ATOL_STREAM)


def test_spent_cache_refused(model, golden):
    cache = model.make_cache(batch=2)
    model.decode_step(mx.array(golden["codes"][:, :, :1]), cache)
    model.flush(cache)
    with pytest.raises(ValueError, match="flushed"):
        model.decode_step(mx.array(golden["codes"][:, :, 1:2]), cache)


@pytest.mark.parametrize("bad", [2048, -1])
def test_out_of_range_codes_refused(model, golden, bad):
    codes = golden["codes"].copy()
    codes[1, 7, 4] = bad
    with pytest.raises(ValueError, match=str(bad)):
        model.decode(mx.array(codes))
    with pytest.raises(ValueError, match=str(bad)):
        model.decode_step(codes, model.make_cache(batch=2))


def test_missing_weight_named(weights, tmp_path):
    partial = {k: v for k, v in weights.items() if k != "lfm.layers.1.self_attn.k_layernorm.weight"}
    with pytest.raises(ValueError, match=r"lfm\.layers\.1\.self_attn\.k_layernorm\.weight"):
        load_detokenizer(_write_checkpoint(tmp_path, partial))


def test_extra_weight_named(weights, tmp_path):
    extra = dict(weights, **{"lfm.rotary_emb.inv_freq": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"lfm\.rotary_emb\.inv_freq"):
        load_detokenizer(_write_checkpoint(tmp_path, extra))


def test_config_ignores_unknown_and_names_missing_keys():
    config = json.loads((FIXTURE / "audio_detokenizer" / "config.json").read_text())
    parsed = DetokenizerConfig.from_dict(dict(config, some_future_key=1))
    assert parsed.ff_dim() == 96 and parsed.rope_theta == 10000.0 and parsed.sliding_window == 30
    del config["num_key_value_heads"]
    with pytest.raises(ValueError, match="num_key_value_heads"):
        DetokenizerConfig.from_dict(config)
