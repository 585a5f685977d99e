"""LFM2-Audio in MLX: encoder + adapter -> LFM2 backbone -> text head or depthformer.

Module attribute names equal the checkpoint keys of liquid_audio's `LFM2AudioModel`, so loading is
`sanitize` + `load_weights(strict=True)`. The backbone is mlx-lm's `Lfm2Model`, composed, not copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx_lm.models import lfm2
from mlx_lm.models.cache import ArraysCache, KVCache

from ..chat import AUDIO_VOCAB, ChatState, Modality
from ..sample import Sampler
from .conformer import ConformerEncoder, EncoderConfig
from .conformer import sanitize as sanitize_conformer
from .depthformer import Depthformer, DepthformerConfig, SharedEmbedding
from .lfm2_args import model_args
from .mel import PreprocessorConfig, mel_frames_to_positions

# Checkpoint tensors inference never reads, dropped by name: training buffers and the audio-out
# embedding's output head (the model predicts audio through the depthformer instead).
UNUSED_KEYS = (
    "codebook_offsets",
    "audio_loss_weights",
    "audio_embedding.embedding_norm.weight",
    "audio_embedding.to_logits.weight",
)


def require(d: dict, key: str, where: str) -> Any:
    """`d[key]`, or a ValueError naming the missing key and its config.json section."""
    if key not in d:
        raise ValueError(f"config.json: {where} is missing required key '{key}'")
    return d[key]


@dataclass
class ModelConfig:
    """A checkpoint's config.json: the model's sections, each parsed by its own part."""

    codebooks: int
    tie_audio_embeddings: bool
    interleaved_n_text: int
    interleaved_n_audio: int
    preprocessor: PreprocessorConfig
    encoder: EncoderConfig
    lfm: lfm2.ModelArgs
    depthformer: DepthformerConfig

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Unknown keys are ignored; a missing required key raises ValueError naming it."""
        top = {f.name: require(d, f.name, "the top level") for f in fields(cls)}
        depth = top["depthformer"]
        return cls(
            codebooks=int(top["codebooks"]),
            tie_audio_embeddings=bool(top["tie_audio_embeddings"]),
            interleaved_n_text=int(top["interleaved_n_text"]),
            interleaved_n_audio=int(top["interleaved_n_audio"]),
            preprocessor=PreprocessorConfig.from_dict(top["preprocessor"]),
            encoder=EncoderConfig.from_dict(top["encoder"]),
            lfm=model_args(top["lfm"], "config.json: lfm"),
            depthformer=DepthformerConfig(
                **{k: require(depth, k, "depthformer") for k in ("layers", "dim", "tie")}
            ),
        )


class AudioAdapter(nn.Module):
    """`audio_adapter.model.{0,1,3}`: LayerNorm -> Linear -> GELU -> Linear (liquid_audio/model/mlp.py)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.model = [nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.model:
            x = layer(x)
        return x


class AudioEmbedding(nn.Module):
    """`audio_embedding`: a frame enters the backbone as the sum of rows `code_k + 2049 k`."""

    def __init__(self, codebooks: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(AUDIO_VOCAB * codebooks, dim)
        self._offsets = mx.arange(codebooks) * AUDIO_VOCAB  # underscore: not a parameter

    def __call__(self, frames: mx.array) -> mx.array:
        """(..., codebooks) codes -> (..., dim)"""
        return self.embedding(frames + self._offsets).sum(axis=-2)


class Model(nn.Module):
    """The whole LFM2-Audio network; attribute names are the reference's checkpoint keys."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cb, hidden, dcfg = config.codebooks, config.lfm.hidden_size, config.depthformer
        self.lfm = lfm2.Lfm2Model(config.lfm)
        self.conformer = ConformerEncoder(config.encoder)
        self.audio_adapter = AudioAdapter(config.encoder.d_model, hidden)
        self.audio_embedding = AudioEmbedding(cb, hidden)
        self.depth_linear = nn.Linear(hidden, dcfg.dim * cb)
        self.depthformer = Depthformer(dcfg)
        self.depth_embeddings = [SharedEmbedding(AUDIO_VOCAB, dcfg.dim, dcfg.tie) for _ in range(cb)]

    # ---- loading -------------------------------------------------------------------------
    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Hugging Face checkpoint tensors -> this module's: drop unused ones by name, move conv
        weights to channels-last, resolve tied depth heads. No renames, no dtype casts. Run once:
        converted MLX folders hold the result and are loaded without it."""
        out = {k: v for k, v in weights.items() if k not in UNUSED_KEYS}
        conformer = {k[len("conformer.") :]: out.pop(k) for k in list(out) if k.startswith("conformer.")}
        out.update({f"conformer.{k}": v for k, v in sanitize_conformer(conformer).items()})
        for k, v in list(out.items()):
            # torch depthwise conv (C, 1, K) -> MLX channels-last (C, K, 1).
            if k.startswith("lfm.") and k.endswith("conv.conv.weight"):
                out[k] = v.transpose(0, 2, 1)
        if self.config.depthformer.tie:
            for i in range(self.config.codebooks):
                # Tied heads are one tensor; a checkpoint may store it under either name.
                head, emb = f"depth_embeddings.{i}.to_logits.weight", f"depth_embeddings.{i}.embedding.weight"
                if head in out:
                    w = out.pop(head)
                    out.setdefault(emb, w)
        return out

    def make_cache(self) -> list:
        """A fresh backbone cache: a KV cache per attention layer, a conv tail per conv layer."""
        return [KVCache() if layer.is_attention_layer else ArraysCache(size=1) for layer in self.lfm.layers]

    @property
    def dtype(self) -> mx.Dtype:
        """The dtype the weights were loaded in (inputs are cast to it)."""
        return self.lfm.embed_tokens.weight.dtype

    # ---- inputs --------------------------------------------------------------------------
    def encode_clips(self, mels: Sequence[np.ndarray]) -> list[mx.array]:
        """`encode_audio` of many clips in one padded pass, split back per clip."""
        enc = self.encode_audio(mels)
        ends = np.cumsum([mel_frames_to_positions(len(m)) for m in mels])
        return [enc[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    def encode_audio(self, mels: Sequence[np.ndarray]) -> mx.array:
        """Mel clips, each (T_i, n_mels), encoded as one padded batch with lengths (never
        concatenated) -> (sum_i ceil(T_i / 8), hidden) adapter outputs in clip order."""
        lengths = [len(m) for m in mels]
        batch = np.zeros((len(mels), max(lengths), mels[0].shape[1]), dtype=np.float32)
        for i, m in enumerate(mels):
            batch[i, : len(m)] = m
        enc, _ = self.conformer(mx.array(batch).astype(self.dtype), mx.array(lengths))
        # Valid lengths are known on the host (3 stride-2 convs: ceil(T / 8)); no device read needed.
        valid = [enc[i, : mel_frames_to_positions(n)] for i, n in enumerate(lengths)]
        return self.audio_adapter(mx.concatenate(valid, axis=0))

    def embed_frames(self, frames: mx.array) -> mx.array:
        """(..., codebooks) audio codes -> (..., hidden) backbone inputs."""
        return self.audio_embedding(frames)

    def embed_text(self, ids: mx.array) -> mx.array:
        """Text token ids (...) -> (..., hidden) backbone inputs."""
        return self.lfm.embed_tokens(ids)

    def embed_chat(
        self, chat: ChatState, start: int = 0, encoded: Sequence[mx.array] | None = None
    ) -> mx.array:
        """The backbone input for a conversation from position `start` on: (1, L - start, hidden)
        in the model's dtype. Only the clips that reach past `start` are encoded, unless
        `encoded` gives every clip's `encode_audio` output already (one pass for many chats)."""
        flags = np.asarray(chat.modality)
        parts, order = [], []
        pos = np.flatnonzero(flags == Modality.TEXT)
        keep = pos >= start
        if keep.any():
            parts.append(self.embed_text(mx.array(np.asarray(chat.text)[keep])))
            order.append(pos[keep])
        pos = np.flatnonzero(flags == Modality.AUDIO_IN)
        sizes = [mel_frames_to_positions(len(m)) for m in chat.audio_in]
        if len(pos) != sum(sizes):
            raise ValueError(
                f"conversation has {len(pos)} audio-in positions but its clips make {sum(sizes)}"
            )
        ends = np.cumsum(sizes)
        clips = [i for i, e in enumerate(ends) if e > 0 and pos[e - 1] >= start]
        if clips:
            if encoded is None:
                enc = self.encode_audio([chat.audio_in[i] for i in clips])
            else:
                enc = mx.concatenate([encoded[i] for i in clips], axis=0)
            mine = np.concatenate([pos[ends[i] - sizes[i] : ends[i]] for i in clips])
            keep = mine >= start
            parts.append(enc[mx.array(np.flatnonzero(keep))] if not keep.all() else enc)
            order.append(mine[keep])
        pos = np.flatnonzero(flags == Modality.AUDIO_OUT)
        keep = pos >= start
        if keep.any():
            frames = np.stack(chat.audio_out)[keep]
            parts.append(self.embed_frames(mx.array(frames)))
            order.append(pos[keep])
        if (
            len(chat.text) != (flags == Modality.TEXT).sum()
            or len(chat.audio_out) != (flags == Modality.AUDIO_OUT).sum()
        ):
            raise ValueError("conversation flags do not match its text tokens and audio frames")
        # Positions are gathered back into conversation order with one inverse permutation.
        n = len(flags) - start
        inverse = np.empty(n, dtype=np.int32)
        inverse[np.concatenate(order) - start] = np.arange(n, dtype=np.int32)
        emb = mx.concatenate([p.astype(self.dtype) for p in parts], axis=0)
        return emb[mx.array(inverse)][None]

    # ---- heads ---------------------------------------------------------------------------
    def __call__(self, inputs_embeds: mx.array, cache: list | None = None) -> mx.array:
        """Backbone: (B, L, hidden) inputs -> (B, L, hidden) normed hidden states."""
        return self.lfm(None, cache=cache, input_embeddings=inputs_embeds)

    def text_logits(self, h: mx.array) -> mx.array:
        """Backbone states (..., hidden) -> text logits through the tied token embedding."""
        return self.lfm.embed_tokens.as_linear(h)

    def depth_inputs(self, h: mx.array) -> mx.array:
        """(B, hidden) -> (B, codebooks, dim)"""
        return self.depth_linear(h).reshape(h.shape[0], self.config.codebooks, -1)

    def sample_frame(self, h: mx.array, sampler: Sampler) -> mx.array:
        """One audio frame from backbone states h (B, hidden): (B, codebooks) codes.

        Codebook k sees code k-1 through the depthformer's per-frame cache; all on device."""
        x = self.depth_inputs(h)
        cache, prev, codes = None, None, []
        for k, emb in enumerate(self.depth_embeddings):
            inp = x[:, k : k + 1] if prev is None else x[:, k : k + 1] + prev
            out, cache = self.depthformer(inp, cache)
            code = sampler(emb.logits(out[:, 0]))
            codes.append(code)
            prev = emb.embedding(code)[:, None]
        return mx.stack(codes, axis=-1)

    def depth_logits(self, h: mx.array, frames: mx.array) -> mx.array:
        """Teacher-forced depthformer logits: h (B, hidden), frames (B, codebooks) ->
        (B, codebooks, 2049); one causal pass over the codebook axis."""
        x = self.depth_inputs(h)
        prev = mx.stack([emb.embedding(frames[:, k]) for k, emb in enumerate(self.depth_embeddings[:-1])], 1)
        x = x + mx.pad(prev, [(0, 0), (1, 0), (0, 0)])
        out, _ = self.depthformer(x)
        return mx.stack([emb.logits(out[:, k]) for k, emb in enumerate(self.depth_embeddings)], axis=1)
