"""Quantized conversion: which layers, round trip, and agreement with the unquantized model."""

import ast
from pathlib import Path

import checkpoints
import numpy as np
import pytest

import lfm2_mlx
from lfm2_mlx.convert import convert
from lfm2_mlx.generate import generate_tokens
from lfm2_mlx.quantize import quantize_model


def logits(m, chat):
    h = m.model(m.model.embed_chat(chat))
    return np.array(m.model.text_logits(h)[0]), h


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return checkpoints.build(checkpoints.load_manifest("core_chat"), tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def chat(src):
    m = lfm2_mlx.load(src)
    c = m.new_chat("Respond with interleaved text and audio.")
    m.user_turn(c, audio=(checkpoints.clip(1.0, seed=6), 16000))
    return c


@pytest.mark.parametrize("bits,group", [(8, 32), (8, 64), (4, 32), (4, 64)])
def test_quantized_layers_and_round_trip(src, chat, tmp_path, bits, group):
    out = convert(
        src,
        tmp_path / "q",
        dtype="float32",
        quantize=True,
        q_bits=bits,
        q_group_size=group,
        log=lambda m: None,
    )
    q = lfm2_mlx.load(out)
    kinds = {p: type(m).__name__ for p, m in q.model.named_modules()}
    # backbone, depthformer and adapter linears are quantized ...
    for p in (
        "lfm.layers.0.feed_forward.w1",
        "lfm.layers.2.self_attn.q_proj",
        "depthformer.layers.1.operator.qkv_proj",
        "depth_linear",
        "audio_adapter.model.1",
    ):
        assert kinds[p] == "QuantizedLinear", p
    # ... embeddings, heads, norms, convs and the conformer keep the base dtype
    for p in (
        "lfm.embed_tokens",
        "audio_embedding.embedding",
        "depth_embeddings.0.embedding",
        "conformer.layers.0.self_attn.linear_q",
        "lfm.layers.0.conv.conv",
    ):
        assert kinds[p] in ("Embedding", "Linear", "Conv1d"), p
    # the folder reproduces the model quantized in memory exactly
    ref = lfm2_mlx.load(src, dtype="float32")
    quantize_model(ref.model, bits, group)
    np.testing.assert_array_equal(logits(q, chat)[0], logits(ref, chat)[0])
    kw = {"mode": "interleaved", "max_new_tokens": 12}
    assert generate_tokens(q.model, chat, **kw) == generate_tokens(ref.model, chat, **kw)


def test_eight_bit_tracks_the_model_closer_than_four_bit(src, chat):
    base = logits(lfm2_mlx.load(src, dtype="float32"), chat)[0]
    err = {}
    for bits in (8, 4):
        m = lfm2_mlx.load(src, dtype="float32")
        quantize_model(m.model, bits, 32)
        err[bits] = np.abs(logits(m, chat)[0] - base).max()
    # tiny random weights, group 32: measured 8-bit 0.34, 4-bit 3.0 on logits up to ~12
    assert err[8] < 0.6 and err[8] < err[4] / 4


def test_bad_quantization_settings_are_refused(src, tmp_path):
    with pytest.raises(ValueError, match="q-bits"):
        convert(src, tmp_path / "x", quantize=True, q_bits=3, log=lambda m: None)
    assert not (tmp_path / "x").exists()


def imported_modules(module: str) -> set:
    """Every lfm2_mlx module `module` imports, at the top or inside a function."""
    path = Path(__file__).resolve().parents[1] / "lfm2_mlx" / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lfm2_mlx."):
            found.add(node.module.split(".", 1)[1])
    return found


def test_loading_and_convert_do_not_import_each_other():
    # The runtime loader needs quantize_model to rebuild a quantized folder's layers; the converter
    # needs the loader. Both come from quantize.py, which imports neither.
    assert "convert" not in imported_modules("loading")
    assert {"loading", "convert"}.isdisjoint(imported_modules("quantize"))
    assert {"loading", "quantize"} <= imported_modules("convert")


def test_one_checkpoint_error():
    import lfm2_mlx.errors
    import lfm2_mlx.loading

    assert lfm2_mlx.loading.CheckpointError is lfm2_mlx.errors.CheckpointError
