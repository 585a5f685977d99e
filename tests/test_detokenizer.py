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
from mlx_lm.models import lfm2

from lfm2_mlx.decoders.detokenizer import Detokenizer, DetokenizerConfig, load_detokenizer
from lfm2_mlx.models.lfm2_args import model_args

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


# The LFM2 argument builder that the detokenizer and the main backbone share (models/lfm2_args.py).
_SECTION = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 100,
    "block_multiple_of": 32,
    "layer_types": ["conv", "full_attention"],
}


@pytest.mark.parametrize("multiplier,width", [(1.0, 96), (None, 66)])
def test_lfm2_ffn_width_follows_transformers(multiplier, width):
    # transformers' Lfm2MLP: int(2 * 100 / 3) = 66, rounded up to a multiple of 32 only when a
    # multiplier is set (mlx-lm's MLP would always round, so the builder hands it the final width).
    section = {**_SECTION, "block_ffn_dim_multiplier": multiplier}
    model = lfm2.Lfm2Model(model_args(section, "test"))
    assert all(layer.feed_forward.w1.weight.shape[0] == width for layer in model.layers)
    detok = DetokenizerConfig.from_dict({**section, "layer_types": ["conv", "sliding_attention"]})
    assert detok.ff_dim() == detok.lfm2_args().block_ff_dim == width


@pytest.mark.parametrize(
    "change,message",
    [
        ({"layer_types": ["conv", "sliding_attention"]}, "sliding_attention"),
        ({"layer_types": ["conv"]}, "1 layer_types for 2 layers"),
        ({"head_dim": 8}, "head_dim 8"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "yarn"),
    ],
)
def test_lfm2_sections_mlx_lm_cannot_build_are_refused(change, message):
    # mlx-lm would build a "sliding_attention" layer as a conv layer: refused, not guessed.
    with pytest.raises(ValueError, match=message):
        model_args({**_SECTION, **change}, "config.json: lfm")


def test_lfm2_layer_types_fall_back_as_transformers_does():
    section = {k: v for k, v in _SECTION.items() if k != "layer_types"}
    assert model_args({**section, "full_attn_idxs": [1]}, "t").layer_types == ["conv", "full_attention"]
    assert model_args(section, "t").layer_types == ["full_attention", "full_attention"]
