"""Mimi decoder against liquid-audio 1.3.0 (fixtures: tools/golden/mimi.py, see its docstring).

Measured on Linux CPU, float32 (max abs error; waveforms peak at about 2.2 / 1.5):
  tiny whole vs reference decode                        8.3e-7
  tiny decode_step vs reference streaming, 4 chunkings  9.5e-7
  tiny decode_step vs whole decode, context 250         4.8e-7
  real-shape whole / decode_step vs reference           1.8e-6
Tolerance TOL = 2e-5 absolute.
"""

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from lfm2_mlx.decoders.mimi import MimiConfig, MimiDecoder, is_dropped_key, load_mimi
from lfm2_mlx.decoders.streaming import ConvTranspose1d, StreamingConv1d, StreamingConvTranspose1d

FIXTURES = Path(__file__).parent / "fixtures" / "mimi"
TOL = 2e-5


def _recipe():
    """tools/golden/mimi.py: its weight recipe is numpy only (torch is imported inside main)."""
    path = Path(__file__).parents[1] / "tools" / "golden" / "mimi.py"
    spec = importlib.util.spec_from_file_location("golden_mimi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_config() -> MimiConfig:
    return MimiConfig.from_reference_kwargs(json.loads((FIXTURES / "tiny_config.json").read_text()))


@pytest.fixture(scope="module")
def tiny(tiny_config) -> MimiDecoder:
    return load_mimi(FIXTURES / "tiny.safetensors", config=tiny_config)


@pytest.fixture(scope="module")
def golden() -> dict:
    return dict(np.load(FIXTURES / "tiny_outputs.npz"))


def _stream(model: MimiDecoder, codes: np.ndarray, chunks: list[int]) -> np.ndarray:
    cache = model.make_cache(codes.shape[0])
    pieces, start = [], 0
    for k in chunks:
        pieces.append(np.array(model.decode_step(codes[:, :, start : start + k], cache)))
        start += k
    pieces.append(np.array(model.flush(cache)))
    return np.concatenate(pieces, axis=-1)


@pytest.mark.parametrize("groups", [1, 6])
def test_transposed_conv_matches_mlx(groups):
    mx.random.seed(0)
    # kernel 3x the stride: three overlapping blocks, beyond Mimi's two.
    layer = ConvTranspose1d(6, 6, 6, 2, groups=groups)
    layer.update({"weight": mx.random.normal(layer.weight.shape), "bias": mx.random.normal((6,))})
    x = mx.random.normal((2, 5, 6))
    expected = mx.conv_transpose1d(x, layer.weight, stride=2, groups=groups) + layer.bias
    np.testing.assert_allclose(np.array(layer(x)), np.array(expected), atol=1e-5, rtol=0)


def test_streaming_convs_chunked_equal_whole():
    mx.random.seed(1)
    conv = StreamingConv1d(4, 5, 3, dilation=2)
    convtr = StreamingConvTranspose1d(5, 3, 6, 2)
    for layer in (conv, convtr):
        layer.update(
            tree_unflatten([(k, mx.random.normal(v.shape)) for k, v in tree_flatten(layer.parameters())])
        )
    x = mx.random.normal((2, 9, 4))
    whole = convtr(conv(x)[0])[0]
    conv_state, convtr_state, pieces, start = None, None, [], 0
    for k in [1, 4, 2, 2]:
        y, conv_state = conv(x[:, start : start + k], conv_state)
        z, convtr_state = convtr(y, convtr_state)
        pieces.append(z)
        start += k
    np.testing.assert_allclose(np.array(mx.concatenate(pieces, axis=1)), np.array(whole), atol=1e-5, rtol=0)


def test_tiny_fixture_overflows_the_context(tiny_config, golden):
    # Otherwise the ring-cache behaviour below would go untested.
    frames = golden["codes"].shape[2]
    assert frames * tiny_config.upsample_stride > tiny_config.context
    assert (
        tiny_config.num_codebooks
        < json.loads((FIXTURES / "tiny_config.json").read_text())["quantizer"]["n_q"]
    )


def test_whole_decode_matches_reference(tiny, golden):
    out = tiny.decode(golden["codes"])
    assert out.dtype == mx.float32
    np.testing.assert_allclose(np.array(out), golden["whole"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["1", "2", "3", "1_3_2_1"])
def test_decode_step_matches_reference_streaming(tiny, golden, name):
    chunks = _recipe().CHUNKINGS[name]
    np.testing.assert_allclose(
        _stream(tiny, golden["codes"], chunks), golden[f"stream_{name}"], atol=TOL, rtol=0
    )


@pytest.mark.parametrize("chunks", [[1] * 7, [2, 2, 2, 1], [3, 3, 1], [1, 3, 2, 1]])
def test_decode_step_equals_whole_decode_within_context(tiny, tiny_config, golden, chunks):
    # With the 7 frames inside the context, streaming and whole decoding are the same maths.
    wide = MimiDecoder(dataclasses.replace(tiny_config, context=250))
    wide.update(tiny.parameters())
    whole = np.array(wide.decode(golden["codes"]))
    np.testing.assert_allclose(_stream(wide, golden["codes"], chunks), whole, atol=1e-5, rtol=0)
    # ... and with the 6-position context they are not: the reference's ring cache is kept.
    assert np.abs(_stream(tiny, golden["codes"], chunks) - whole).max() > 1e-2


def test_default_config_is_get_mimi():
    real = json.loads((FIXTURES / "real_config.json").read_text())
    assert MimiConfig.from_reference_kwargs(real) == MimiConfig()
    assert (MimiConfig().frame_size, MimiConfig().upsample_stride) == (1920, 2)


def test_unsupported_reference_options_are_refused():
    real = json.loads((FIXTURES / "real_config.json").read_text())
    for part, name, value in [("seanet", "norm", "weight_norm"), ("transformer", "gating", "silu")]:
        changed = json.loads(json.dumps(real))
        changed[part][name] = value
        with pytest.raises(ValueError, match=f"{part}.{name}"):
            MimiConfig.from_reference_kwargs(changed)


def test_real_shape_matches_reference():
    recipe = _recipe()
    cfg = MimiConfig()
    keys = json.loads((FIXTURES / "real_keys.json").read_text())
    weights = {
        k: mx.array(recipe.random_tensor(k, tuple(shape), recipe.REAL_SEED))
        for k, shape in keys.items()
        if not is_dropped_key(k, cfg)
    }
    model = MimiDecoder(cfg)
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    golden = np.load(FIXTURES / "real_outputs.npz")
    np.testing.assert_allclose(np.array(model.decode(golden["codes"])), golden["whole"], atol=TOL, rtol=0)
    np.testing.assert_allclose(_stream(model, golden["codes"], [1, 3]), golden["whole"], atol=TOL, rtol=0)


def test_real_checkpoint_layout_maps_onto_the_model():
    cfg = MimiConfig()
    keys = json.loads((FIXTURES / "real_keys.json").read_text())
    # Lazy zeros: only shapes are looked at, nothing is allocated.
    placeholders = {k: mx.broadcast_to(mx.array(0.0), tuple(s)) for k, s in keys.items()}
    sanitized = {k: tuple(v.shape) for k, v in MimiDecoder(cfg).sanitize(placeholders).items()}
    expected = {k: tuple(v.shape) for k, v in tree_flatten(MimiDecoder(cfg).parameters())}
    assert sanitized == expected
    dropped = [k for k in keys if is_dropped_key(k, cfg)]
    assert all(
        k.startswith(("encoder.", "encoder_transformer.", "downsample.", "quantizer.")) for k in dropped
    )
    assert sum(k.endswith("embedding_sum") for k in keys if not is_dropped_key(k, cfg)) == 8
    assert any(k.startswith("encoder.model.") for k in dropped)
    assert any(k.startswith("encoder_transformer.") for k in dropped)


def _load_modified(tmp_path, config, edit) -> MimiDecoder:
    weights = dict(mx.load(str(FIXTURES / "tiny.safetensors")))
    edit(weights)
    path = tmp_path / "mimi.safetensors"
    mx.save_safetensors(str(path), weights)
    return load_mimi(path, config=config)


def test_missing_key_is_an_error_naming_it(tmp_path, tiny_config):
    key = "decoder.model.0.conv.conv.bias"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _load_modified(tmp_path, tiny_config, lambda w: w.pop(key))
    usage = "quantizer.rvq_rest.vq.layers.6._codebook.cluster_usage"
    with pytest.raises(ValueError, match=usage.replace(".", r"\.")):
        _load_modified(tmp_path, tiny_config, lambda w: w.pop(usage))


@pytest.mark.parametrize(
    "key",
    [
        "decoder.model.0.conv.conv.extra",
        # Mimi's attention has one step: index 0 is a spelling of in_proj_weight, 1 is unknown.
        "decoder_transformer.transformer.layers.0.self_attn.in_projs.1.weight",
        "encoderx.weight",
        "quantizer.rvq_first.vq.layers.0._codebook.embed_avg",
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path, tiny_config, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _load_modified(tmp_path, tiny_config, lambda w: w.__setitem__(key, mx.zeros((2, 2))))


def test_encoder_half_and_extra_codebooks_are_dropped(tmp_path, tiny_config, golden):
    weights = dict(mx.load(str(FIXTURES / "tiny.safetensors")))
    assert "encoder.model.0.conv.conv.weight" in weights
    assert "quantizer.rvq_rest.vq.layers.7._codebook.embedding_sum" in weights  # codebook 9 of 9
    assert "downsample.conv.conv.conv.weight" in weights
    # A key of the encoder half that the fixture lacks is dropped just the same.
    model = _load_modified(
        tmp_path, tiny_config, lambda w: w.__setitem__("encoder.model.0.conv.conv.extra", mx.zeros((2,)))
    )
    np.testing.assert_allclose(np.array(model.decode(golden["codes"])), golden["whole"], atol=TOL, rtol=0)


@pytest.mark.parametrize("bad", [2048, -1])
def test_out_of_range_codes_are_refused(tiny, golden, bad):
    codes = golden["codes"].copy()
    codes[1, 3, 4] = bad
    with pytest.raises(ValueError, match="0..2047"):
        tiny.decode(codes)
    with pytest.raises(ValueError, match="0..2047"):
        tiny.decode(codes.tolist())
    with pytest.raises(ValueError, match="0..2047"):
        tiny.decode_step(codes[:, :, 4:5], tiny.make_cache(2))


def test_out_of_range_device_codes_give_nan_not_a_table_overrun(tiny, golden):
    codes = golden["codes"].copy()
    codes[1, 3, 4] = 2048
    out = np.array(tiny.decode(mx.array(codes)))
    frame = tiny.frame_size
    # Row 1 goes NaN (attention spreads it through the sequence); row 0 is untouched.
    assert np.isnan(out[1, 4 * frame : 5 * frame]).all()
    np.testing.assert_allclose(out[0], golden["whole"][0], atol=TOL, rtol=0)


def test_shape_and_chunk_errors(tiny, golden):
    codes = golden["codes"]
    with pytest.raises(ValueError, match="batch"):
        tiny.decode_step(codes[:, :, :1], tiny.make_cache(1))
    with pytest.raises(ValueError, match=r"\(B, 8, T\)"):
        tiny.decode(codes[:, :7])
    with pytest.raises(ValueError, match="at most 3 frames"):
        tiny.decode_step(codes[:, :, :4], tiny.make_cache(2))
    with pytest.raises(ValueError, match="integers"):
        tiny.decode(codes.astype(np.float32))


def test_bfloat16_keeps_its_dtype_through_the_cache(tiny_config, golden):
    model = load_mimi(FIXTURES / "tiny.safetensors", dtype=mx.bfloat16, config=tiny_config)
    cache = model.make_cache(2)
    out = model.decode_step(golden["codes"][:, :, :2], cache)
    assert out.dtype == mx.float32
    states = [cache.upsample] + [a for c in cache.transformer for a in (c.keys, c.values)]
    states += [s for _, s in tree_flatten(cache.decoder) if isinstance(s, mx.array)]
    assert all(s.dtype == mx.bfloat16 for s in states)
    ref = golden["whole"][:, : out.shape[1]]
    assert np.abs(np.array(out) - ref).max() < 0.1 * np.abs(ref).max()


# Spellings of the decoder transformer's attention projections that moshi's
# `StreamingMultiheadAttention._load_hook` accepts (Mimi has one weight per step, so index 0 only):
# the fused names of older checkpoints and the per-step `in_projs`/`out_projs` of current moshi.
IN_PROJ_SPELLINGS = ["in_proj_weight", "in_proj.weight", "in_projs.0.weight"]
OUT_PROJ_SPELLINGS = ["out_proj.weight", "out_projs.0.weight"]


def _respell(in_name: str, out_name: str):
    def edit(weights):
        for key in [k for k in weights if ".self_attn." in k]:
            prefix, _, leaf = key.partition(".self_attn.")
            name = {"in_proj_weight": in_name, "out_proj.weight": out_name}[leaf]
            weights[f"{prefix}.self_attn.{name}"] = weights.pop(key)

    return edit


@pytest.mark.parametrize("out_name", OUT_PROJ_SPELLINGS)
@pytest.mark.parametrize("in_name", IN_PROJ_SPELLINGS)
def test_every_moshi_attention_key_spelling_loads(tmp_path, tiny, tiny_config, golden, in_name, out_name):
    model = _load_modified(tmp_path, tiny_config, _respell(in_name, out_name))
    out = np.array(model.decode(golden["codes"]))
    np.testing.assert_array_equal(out, np.array(tiny.decode(golden["codes"])))
    np.testing.assert_allclose(out, golden["whole"], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "leaf", ["in_projs.1.weight", "in_proj.bias", "in_projs.0.bias", "out_projs.1.weight", "out_proj_weight"]
)
def test_unknown_attention_spelling_is_an_error_naming_it(tmp_path, tiny_config, leaf):
    key = f"decoder_transformer.transformer.layers.1.self_attn.{leaf}"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _load_modified(tmp_path, tiny_config, lambda w: w.__setitem__(key, mx.zeros((16, 16))))


def test_missing_respelled_attention_weight_is_an_error_naming_it(tmp_path, tiny_config):
    def edit(w):
        _respell("in_projs.0.weight", "out_projs.0.weight")(w)
        del w["decoder_transformer.transformer.layers.1.self_attn.out_projs.0.weight"]

    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.out_proj\.weight"):
        _load_modified(tmp_path, tiny_config, edit)


def test_load_mimi_takes_the_file_or_its_folder_and_name(tmp_path, tiny, tiny_config, golden):
    # The checkpoint's Mimi file name lives in lfm2_mlx.loading (MIMI_FILE); load_mimi has no copy.
    shutil.copy(FIXTURES / "tiny.safetensors", tmp_path / "codec.safetensors")
    model = load_mimi(tmp_path, config=tiny_config, filename="codec.safetensors")
    np.testing.assert_array_equal(
        np.array(model.decode(golden["codes"])), np.array(tiny.decode(golden["codes"]))
    )
    with pytest.raises(ValueError, match="filename"):
        load_mimi(tmp_path, config=tiny_config)


@pytest.mark.parametrize(
    "old,new",
    [
        ("in_proj_weight", "in_projs.0.weight"),
        ("in_proj_weight", "in_proj.weight"),
        ("out_proj.weight", "out_projs.0.weight"),
    ],
)
def test_two_spellings_of_one_weight_are_an_error_naming_both(tmp_path, tiny_config, old, new):
    # Strict: a checkpoint holding a projection twice is ambiguous, not silently one of them.
    prefix = "decoder_transformer.transformer.layers.0.self_attn."

    def add(w):
        w[prefix + new] = w[prefix + old]

    with pytest.raises(ValueError) as error:
        _load_modified(tmp_path, tiny_config, add)
    assert prefix + old in str(error.value) and prefix + new in str(error.value)
