"""Golden fixtures for the core model, from the PyTorch reference (liquid-audio 1.3.0).

Run with the reference venv (CPU, float32 unless stated):

    PY=$(bash ../shared/reference/setup.sh | tail -1)
    $PY tools/make_golden.py            # writes tests/fixtures/{tokenizer,core_*}/

It builds tiny random-weight checkpoints in the Hugging Face layout from manifests
(tests/checkpoints.py rebuilds the same bytes without torch), runs the reference on them and
writes small .npz/.json outputs. Only manifests and outputs are committed, never weights.
Scenarios whose path random weights seldom take (<|audio_start|>, EOAudio, <|text_end|>) get a
checkpoint steered there by a few recorded edits to head rows, searched for below.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import checkpoints
from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor

FIXTURES = ROOT / "tests" / "fixtures"
SEED = 20261122
AUDIO_START, IM_END, TEXT_END, EOA = 128, 7, 130, 2048
DERIVED_BUFFERS = ("codebook_offsets", "audio_loss_weights")

PREPROCESSOR = checkpoints.PREPROCESSOR
ENCODER = checkpoints.encoder_config(n_layers=2, d_model=64, n_heads=4, channels=32)
LFM = {
    "model_type": "lfm2",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "norm_eps": 1e-05,
    "conv_bias": False,
    "conv_L_cache": 3,
    "block_multiple_of": 32,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "layer_types": ["conv", "conv", "full_attention", "conv", "full_attention", "conv"],
    "rope_theta": 1000000.0,
    "bos_token_id": 1,
    "eos_token_id": 7,
    "pad_token_id": 0,
}
CONFIG = {
    "architectures": ["LFM2AudioModel"],
    "codebooks": 8,
    "tie_audio_embeddings": False,
    "semantic_codebook_factor": 100,
    "codebook_weight": "log",
    "interleaved_n_text": 6,
    "interleaved_n_audio": 12,
    "preprocessor": PREPROCESSOR,
    "encoder": ENCODER,
    "lfm": LFM,
    # The real depthformer is 6 layers of 1024; 128 keeps head_dim 4 so RoPE's theta still matters.
    "depthformer": {"layers": 2, "dim": 128, "tie": True},
}
CORPUS = [
    "Perform ASR.",
    "Perform TTS. Use the US male voice.",
    "Perform TTS. Use the UK female voice.",
    "Respond with interleaved text and audio.",
    "Hello there, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "What is the weather like in Boston tomorrow?",
    "I think it will rain, so take an umbrella with you.",
    "system user assistant",
]


# ---- tokenizer and manifests -----------------------------------------------------------------
def make_tokenizer(out: Path) -> None:
    """A small byte-level BPE with the LFM2 special tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    named = {
        0: "<|pad|>",
        1: "<|startoftext|>",
        2: "<|endoftext|>",
        6: "<|im_start|>",
        7: "<|im_end|>",
        128: "<|audio_start|>",
        129: "<|text_start|>",
        130: "<|text_end|>",
    }
    specials = [named.get(i, f"<|reserved_{i}|>") for i in range(131)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|pad|>",
                "model_max_length": 4096,
            },
            indent=2,
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}, indent=2
        )
    )
    (out / "chat_template.jinja").write_text(
        "{{- bos_token -}}{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
    )


def tensor_shapes(config: dict) -> dict[str, list[int]]:
    """Every checkpoint tensor of the reference model for `config`, tied heads stored once."""
    from dataclasses import asdict  # noqa: F401

    from liquid_audio.model.conformer.encoder import ConformerEncoderConfig
    from liquid_audio.model.lfm2_audio import DepthformerConfig, LFM2AudioConfig
    from transformers import Lfm2Config

    c = dict(config)
    conf = LFM2AudioConfig(
        lfm=Lfm2Config(**c.pop("lfm")),
        encoder=ConformerEncoderConfig(**c.pop("encoder")),
        depthformer=DepthformerConfig(**c.pop("depthformer")),
        **c,
    )
    model = LFM2AudioModel(conf)
    seen, shapes = set(), {}
    for k, v in model.state_dict(keep_vars=True).items():
        # A tied tensor is one tensor: keep its first name. Buffers the model derives from the
        # config (codebook offsets, loss weights) are not random data: leave them out.
        if id(v) in seen or k in DERIVED_BUFFERS:
            continue
        seen.add(id(v))
        shapes[k] = list(v.shape)
    return shapes


def manifest(edits=(), config=CONFIG) -> dict:
    return {
        "reference": f"liquid-audio {liquid_audio_version()}",
        "seed": SEED,
        "config": config,
        "tensors": tensor_shapes(config),
        "edits": list(edits),
    }


def liquid_audio_version() -> str:
    from importlib.metadata import version

    return version("liquid-audio")


# ---- running the reference ---------------------------------------------------------------------
class Reference:
    def __init__(self, man: dict, dtype=torch.float32):
        self.dir = Path(tempfile.mkdtemp(prefix="lfm2-golden-"))
        checkpoints.build(man, self.dir)
        self.proc = LFM2AudioProcessor.from_pretrained(self.dir, device="cpu")
        self.model = LFM2AudioModel.from_pretrained(self.dir, dtype=dtype, device="cpu").eval()
        self.dtype = dtype
        self._check_loaded(man)

    def _check_loaded(self, man: dict) -> None:
        # accelerate's loader is not strict: prove every stored tensor reached the model.
        weights = checkpoints.make_weights(man)
        sd = self.model.state_dict()
        for k, v in weights.items():
            ref = torch.from_numpy(checkpoints.bf16_round(v) if v.dtype == np.float32 else v)
            got = sd[k].float() if v.dtype == np.float32 else sd[k]
            assert torch.equal(got, ref.to(got.dtype)), f"reference did not load {k}"

    def chat(self, turns) -> ChatState:
        """turns: [(role, [str | np.ndarray clip, ...]), ...]; ends with the assistant prompt."""
        chat = ChatState(self.proc, dtype=self.dtype)
        for role, parts in turns:
            chat.new_turn(role)
            for p in parts:
                if isinstance(p, str):
                    chat.add_text(p)
                elif isinstance(p, tuple):  # generated assistant output: (tokens)
                    append_generated(chat, p[0])
                else:
                    chat.add_audio(torch.from_numpy(p)[None], 16000)
            chat.end_turn()
        chat.new_turn("assistant")
        return chat

    def generate(self, chat: ChatState, mode: str, n: int, record: bool = False, **kw):
        m = self.model
        text_logits, depth_logits = [], []
        if record:
            orig = m._sample_text_token

            def text_hook(logits, **k):
                text_logits.append(logits.detach().float().clone().numpy())
                return orig(logits, **k)

            m._sample_text_token = text_hook
            getters = [e.get_logits for e in m.depth_embeddings]
            for i, e in enumerate(m.depth_embeddings):

                def depth_hook(x, i=i):
                    out = getters[i](x)
                    depth_logits.append(out.detach().float().clone().numpy())
                    return out

                e.get_logits = depth_hook
        gen = m.generate_sequential if mode == "sequential" else m.generate_interleaved
        try:
            out = [t.tolist() if t.numel() > 1 else int(t) for t in gen(**chat, max_new_tokens=n, **kw)]
        finally:
            if record:
                del m._sample_text_token
                for e in m.depth_embeddings:
                    del e.get_logits
        return out, np.array(text_logits), np.array(depth_logits).reshape(-1, 8, 2049)

    def prefill(self, chat: ChatState):
        with torch.no_grad():
            emb = self.model._prefill(**{k: chat[k] for k in chat.model_inputs})
            h = self.model.lfm(inputs_embeds=emb, use_cache=False).last_hidden_state[0]
            logits = h @ self.model.lfm.embed_tokens.weight.T
        return emb[0].float().numpy(), logits.float().numpy()


def append_generated(chat: ChatState, tokens) -> None:
    """The reference demo's way of keeping an assistant turn (liquid_audio/demo/chat.py)."""
    from liquid_audio.utils import LFMModality

    text = [t for t in tokens if isinstance(t, int)]
    frames = [t for t in tokens if isinstance(t, list)]
    mods = [LFMModality.TEXT if isinstance(t, int) else LFMModality.AUDIO_OUT for t in tokens]
    chat.append(
        text=torch.tensor([text], dtype=torch.long),
        audio_out=torch.tensor(frames, dtype=torch.long).T.reshape(8, -1),
        modality_flag=torch.tensor(mods),
    )


# ---- scenarios ---------------------------------------------------------------------------------
CLIP_A = checkpoints.clip(1.37, seed=1)
CLIP_B = checkpoints.clip(0.83, seed=2)
ASR_TURNS = [("system", ["Perform ASR."]), ("user", [CLIP_A])]
TTS_TURNS = [
    ("system", ["Perform TTS. Use the US male voice."]),
    ("user", ["Hello there, how are you today?"]),
]
CHAT_TURNS = [("system", ["Respond with interleaved text and audio."]), ("user", [CLIP_A])]


def search(base_edits, candidates, run, ok):
    """First edit (from `candidates`) with which `ok(run(edits))` holds."""
    for edit in candidates:
        edits = base_edits + [edit]
        out = run(edits)
        if ok(out):
            return edits, out
    raise RuntimeError("no crafted checkpoint produced the wanted path")


def row_edits(tensor: str, row: int, dims, scales):
    return [{"tensor": tensor, "index": [row, d], "value": s} for s in scales for d in dims]


def first(seq, pred, start=0):
    return next((i for i in range(start, len(seq)) if pred(seq[i])), None)


def tts_ok(out) -> bool:
    a = first(out, lambda t: t == AUDIO_START)
    e = first(out, lambda t: isinstance(t, list) and t[0] == EOA)
    return a is not None and a >= 1 and e is not None and e - a >= 3 and e + 1 < len(out)


def chat_ok(out) -> bool:
    text = [i for i, t in enumerate(out) if isinstance(t, int)]
    te = first(out, lambda t: t == TEXT_END)
    e = first(out, lambda t: isinstance(t, list) and t[0] == EOA, te or 0)
    return te is not None and len([i for i in text if i < te]) >= 7 and e is not None


def save(name: str, man: dict, **arrays) -> None:
    d = FIXTURES / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(man, indent=1))
    js = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    npz = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    (d / "expected.json").write_text(json.dumps(js, indent=1))
    np.savez_compressed(d / "expected.npz", **npz)
    print(f"{name}: {sorted(js)} {sorted(npz)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    want = lambda n: not args.only or n in args.only
    torch.manual_seed(SEED)
    if not (FIXTURES / "tokenizer" / "tokenizer.json").exists():
        make_tokenizer(FIXTURES / "tokenizer")
    plain = manifest()

    if want("core_asr"):
        ref = Reference(plain)
        chat = ref.chat(ASR_TURNS)
        out, tl, _ = ref.generate(chat, "sequential", 24, record=True)
        emb, logits = ref.prefill(chat)
        save(
            "core_asr",
            plain,
            tokens=out,
            text_logits=tl,
            prefill_logits=logits[-4:],
            mel=chat.audio_in.T.float().numpy(),
        )

    if want("core_tts"):

        def run(edits):
            ref = Reference(manifest(edits))
            return ref.generate(ref.chat(TTS_TURNS), "sequential", 40)[0]

        emb_rows = "lfm.embed_tokens.weight"
        steer = row_edits(emb_rows, AUDIO_START, range(8), [2.0, 4.0, 8.0])
        eos = row_edits("depth_embeddings.0.embedding.weight", EOA, range(8), [1.0, 2.0, 4.0, 8.0])
        edits = []
        for cand in steer:
            out = run([cand])
            a = first(out, lambda t: t == AUDIO_START)
            if a is not None and a >= 1:
                edits = [cand]
                break
        edits, out = search(edits, eos, run, tts_ok)
        man = manifest(edits)
        ref = Reference(man)
        chat = ref.chat(TTS_TURNS)
        out, tl, dl = ref.generate(chat, "sequential", 40, record=True)
        save("core_tts", man, tokens=out, text_logits=tl, depth_logits=dl[:4])

    if want("core_chat"):

        def run(edits):
            ref = Reference(manifest(edits))
            return ref.generate(ref.chat(CHAT_TURNS), "interleaved", 64)[0]

        steer = row_edits("lfm.embed_tokens.weight", TEXT_END, range(8), [1.0, 2.0, 4.0])
        eos = row_edits("depth_embeddings.0.embedding.weight", EOA, range(8), [1.0, 2.0, 4.0, 8.0])
        edits = []
        for cand in steer:
            out = run([cand])
            te = first(out, lambda t: t == TEXT_END)
            if te is not None and len([t for t in out[:te] if isinstance(t, int)]) >= 7:
                edits = [cand]
                break
        edits, out = search(edits, eos, run, chat_ok)
        man = manifest(edits)
        ref = Reference(man)
        chat = ref.chat(CHAT_TURNS)
        out, tl, dl = ref.generate(chat, "interleaved", 64, record=True)
        # Second turn: the first reply (its audio included) stays in the history; a second clip.
        chat2 = ref.chat(CHAT_TURNS[:1] + [("user", [CLIP_A]), ("assistant", [(out,)]), ("user", [CLIP_B])])
        out2, tl2, _ = ref.generate(chat2, "interleaved", 40, record=True)
        emb, logits = ref.prefill(chat2)
        save(
            "core_chat",
            man,
            tokens=out,
            text_logits=tl,
            depth_logits=dl[:4],
            tokens_turn2=out2,
            text_logits_turn2=tl2,
            prefill_embeddings=emb,
            prefill_logits=logits,
            modality_turn2=chat2.modality_flag[0].tolist(),
        )

    if want("core_bf16"):
        ref = Reference(plain, dtype=torch.bfloat16)
        chat = ref.chat(ASR_TURNS)
        out, tl, _ = ref.generate(chat, "sequential", 12, record=True)
        _, logits = ref.prefill(chat)
        save("core_bf16", plain, tokens=out, text_logits=tl, prefill_logits=logits[-4:])

    if want("core_sampling"):
        # The reference's sampling rules: capture the distribution it hands to torch.multinomial.
        ref = Reference(plain)
        rng = np.random.default_rng(SEED)
        cases = [(0.8, 64), (1.0, 4), (0.7, None), (1.3, 2)]
        logits = (3 * rng.standard_normal((len(cases), 2049))).astype(np.float32)
        logits[:, 5] = logits[:, 9]  # a tie at the k-th place must keep both
        probs = []
        captured = []
        orig = torch.multinomial
        torch.multinomial = lambda p, n: (captured.append(p.clone()), orig(p, n))[1]
        try:
            for (t, k), row in zip(cases, logits):
                ref.model._sample_text_token(torch.from_numpy(row.copy()), temperature=t, top_k=k)
                probs.append(captured[-1].numpy())
        finally:
            torch.multinomial = orig
        save("core_sampling", plain, cases=cases, logits=logits, probs=np.array(probs))


if __name__ == "__main__":
    main()
