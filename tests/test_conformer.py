"""FastConformer encoder against liquid-audio's ConformerEncoder (fixtures: tools/golden/encoder.py).

The fixture encoder keeps the real structure (dw_striding x8, rel-pos MHA, kernel 9, batch norm,
128 mel features) at d_model 64, 2 layers, 4 heads, 32 subsampling channels, with every tensor random.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from lfm2_mlx.models.conformer import ConformerEncoder, EncoderConfig, sanitize

FIXTURES = Path(__file__).parent / "fixtures" / "encoder"
# Measured max abs error 1.4e-6 (outputs up to |3.0|), float32 on CPU.
ATOL = 2e-5


@pytest.fixture(scope="module")
def config_dict() -> dict:
    return json.loads((FIXTURES / "config.json").read_text())["encoder"]


@pytest.fixture(scope="module")
def weights() -> dict[str, mx.array]:
    w = mx.load(str(FIXTURES / "conformer.safetensors"))
    prefix = "conformer."
    assert all(k.startswith(prefix) for k in w)
    return {k[len(prefix) :]: v for k, v in w.items()}


@pytest.fixture(scope="module")
def model(config_dict, weights) -> ConformerEncoder:
    m = ConformerEncoder(EncoderConfig.from_dict(config_dict))
    m.load_weights(list(sanitize(weights).items()), strict=True)
    return m


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    f = np.load(FIXTURES / "features.npz")
    e = np.load(FIXTURES / "encoder.npz")
    return {"mel_a": f["mel_a"].T, "mel_b": f["mel_b"].T, **e}


def _run(model: ConformerEncoder, mels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    # Zero-padded (B, T, 128) batch, as LFM2AudioModel pads its clips.
    lengths = [m.shape[0] for m in mels]
    x = np.zeros((len(mels), max(lengths), mels[0].shape[1]), np.float32)
    for i, m in enumerate(mels):
        x[i, : len(m)] = m
    out, out_len = model(mx.array(x), mx.array(lengths))
    return np.array(out), np.array(out_len)


@pytest.mark.parametrize("clip", ["a", "b"])
def test_single_clip_matches_reference(model, data, clip):
    out, out_len = _run(model, [data[f"mel_{clip}"]])
    np.testing.assert_array_equal(out_len, data[f"len_{clip}"])
    assert out.shape == data[f"out_{clip}"].shape
    np.testing.assert_allclose(out, data[f"out_{clip}"], rtol=0, atol=ATOL)


def test_padded_batch_matches_reference(model, data):
    out, out_len = _run(model, [data["mel_a"], data["mel_b"]])
    np.testing.assert_array_equal(out_len, data["len_batch"])
    # The whole batch, padded rows of the short clip included, as the reference computes it.
    np.testing.assert_allclose(out, data["out_batch"], rtol=0, atol=ATOL)
    # Each clip's valid outputs equal the clip encoded alone: padding does not leak.
    for i, clip in enumerate("ab"):
        n = int(out_len[i])
        np.testing.assert_allclose(out[i, :n], data[f"out_{clip}"][0], rtol=0, atol=ATOL)


def test_padding_content_is_ignored(model, data):
    # Garbage past a clip's length must not reach its outputs (masking in subsampling, attention, conv).
    mel_b = data["mel_b"]
    n = len(mel_b)
    x = np.random.default_rng(0).standard_normal((1, len(data["mel_a"]), 128)).astype(np.float32) * 5
    x[0, :n] = mel_b
    out, out_len = model(mx.array(x), mx.array([n]))
    m = int(np.array(out_len)[0])
    np.testing.assert_allclose(np.array(out)[0, :m], data["out_b"][0], rtol=0, atol=ATOL)


def test_strict_loading_names_missing_and_extra_keys(config_dict, weights):
    sanitized = sanitize(weights)
    # The reference's sinusoid table is a non-persistent buffer: not in the checkpoint, not expected.
    assert not any("pos_enc" in k for k in sanitized)
    assert not any(k.endswith("num_batches_tracked") for k in sanitized)

    missing = dict(sanitized)
    del missing["layers.1.self_attn.pos_bias_v"]
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.pos_bias_v"):
        ConformerEncoder(EncoderConfig.from_dict(config_dict)).load_weights(
            list(missing.items()), strict=True
        )

    extra = {**sanitized, "layers.0.conv.batch_norm.extra_stat": mx.zeros((64,))}
    with pytest.raises(ValueError, match=r"layers\.0\.conv\.batch_norm\.extra_stat"):
        ConformerEncoder(EncoderConfig.from_dict(config_dict)).load_weights(list(extra.items()), strict=True)


def test_sanitize_only_drops_counters_and_moves_conv_layout(weights):
    bf16 = {k: v.astype(mx.bfloat16) if v.dtype == mx.float32 else v for k, v in weights.items()}
    out = sanitize(bf16)
    assert set(out) == {k for k in weights if not k.endswith("num_batches_tracked")}
    assert all(v.dtype == mx.bfloat16 for v in out.values())
    # (O, I, H, W) -> (O, H, W, I) and (O, I, K) -> (O, K, I); everything else untouched.
    assert out["pre_encode.conv.0.weight"].shape == (32, 3, 3, 1)
    assert out["pre_encode.conv.3.weight"].shape == (32, 1, 1, 32)
    assert out["layers.0.conv.depthwise_conv.weight"].shape == (64, 9, 1)
    assert out["layers.0.conv.pointwise_conv1.weight"].shape == (128, 1, 64)
    assert mx.array_equal(
        out["layers.0.conv.depthwise_conv.weight"][:, :, 0],
        bf16["layers.0.conv.depthwise_conv.weight"][:, 0, :],
    )
    assert mx.array_equal(out["pre_encode.out.weight"], bf16["pre_encode.out.weight"])


def test_config_from_dict(config_dict):
    assert EncoderConfig.from_dict({**config_dict, "new_field": 3}) == EncoderConfig.from_dict(config_dict)
    missing = {k: v for k, v in config_dict.items() if k != "conv_kernel_size"}
    with pytest.raises(ValueError, match="config.json: encoder is missing 'conv_kernel_size'"):
        EncoderConfig.from_dict(missing)
    for key, value in [
        ("xscaling", True),
        ("self_attention_model", "abs_pos"),
        ("att_context_size", [70, 13]),
        ("subsampling", "striding"),
        ("conv_norm_type", "layer_norm"),
    ]:
        with pytest.raises(ValueError, match=key):
            EncoderConfig.from_dict({**config_dict, key: value})
