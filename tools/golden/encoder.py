"""Golden fixtures for the log-mel front end and the FastConformer encoder.

Run with the reference venv (liquid-audio 1.3.0, torch, librosa):

    /root/.cache/lfm2-reference/venv/bin/python tools/golden/encoder.py --out tests/fixtures/encoder

Writes into --out:
  conformer.safetensors  a small random encoder, every tensor random, keys as in model.safetensors
                         (prefix "conformer.", PyTorch layout, num_batches_tracked included)
  config.json            {"preprocessor": real LFM2-Audio section, "encoder": the small encoder's section}
  features.npz           wave_a, wave_b (16 kHz float32), mel_a, mel_b ((128, T) as ChatState.add_audio
                         stores them), mel_filters (librosa's (128, 257) filterbank for the real config)
  encoder.npz            out_a, out_b (each clip alone), out_batch (both as one padded batch),
                         len_a, len_b, len_batch; outputs channels-last (B, T', d_model)
  meta.json              reference version, seed, shapes
"""

import argparse
import json
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import librosa
import numpy as np
import torch
from liquid_audio.model.conformer.encoder import ConformerEncoder, ConformerEncoderConfig
from liquid_audio.model.conformer.processor import AudioToMelSpectrogramPreprocessor
from liquid_audio.processor import ChatState, LFM2AudioProcessor, PreprocessorConfig
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import checkpoints

SEED = 20240611
SR = 16_000

PREPROCESSOR = checkpoints.PREPROCESSOR

# The real encoder section with the sizes shrunk (real: n_layers 17, d_model 512, n_heads 8,
# subsampling_conv_channels 256); every structural choice is kept.
ENCODER = checkpoints.encoder_config(n_layers=2, d_model=64, n_heads=4, channels=32)


def make_clips(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Lengths not multiples of the 160-sample hop, so the valid-frame floor is exercised.
    n_a, n_b = 21_937, 13_283  # 1.371 s, 0.830 s
    t_a, t_b = np.arange(n_a) / SR, np.arange(n_b) / SR
    a = 0.3 * np.sin(2 * np.pi * 440.0 * t_a) + 0.1 * np.sin(2 * np.pi * 2750.0 * t_a)
    a += 0.05 * rng.standard_normal(n_a)
    # Digital silence: the reference puts log(2^-24) exactly there, which any dither would move.
    a[6_000:9_500] = 0.0
    b = 0.2 * np.sin(2 * np.pi * (300.0 + 900.0 * t_b) * t_b) + 0.08 * rng.standard_normal(n_b)
    return a.astype(np.float32), b.astype(np.float32)


class _OneTokenTokenizer:
    """ChatState's constructor encodes "<|startoftext|>"; no tokenizer files exist here."""

    def encode(self, text, add_special_tokens=False, return_tensors="pt"):
        assert text == "<|startoftext|>"
        return torch.tensor([[1]])


def chat_state_mel(wave: np.ndarray) -> np.ndarray:
    # The real ChatState.add_audio, on a processor whose audio part is built as from_pretrained builds it.
    proc = LFM2AudioProcessor.__new__(LFM2AudioProcessor)
    proc.text_tokenizer = _OneTokenTokenizer()
    proc.audio_processor = AudioToMelSpectrogramPreprocessor(
        **asdict(PreprocessorConfig(**PREPROCESSOR))
    ).eval()
    # float32: ChatState's default bf16 would round the features the port is compared against.
    state = ChatState(proc, dtype=torch.float32)
    state.add_audio(torch.from_numpy(wave)[None], SR)
    assert state.audio_in_lens.tolist() == [state.audio_in.shape[1]]
    return state.audio_in.numpy()  # (128, T)


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> None:
    sd = model.state_dict()
    with torch.no_grad():
        for name, t in sd.items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.3 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1 and name.endswith(".weight"):  # LayerNorm / BatchNorm scale
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            elif t.ndim >= 2 and not name.endswith(("pos_bias_u", "pos_bias_v")):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in**0.5)
            else:  # biases, pos_bias_u / pos_bias_v
                t.copy_(0.3 * torch.randn(t.shape, generator=gen))


def run_encoder(enc: ConformerEncoder, mels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    # As LFM2AudioModel does: pad (T, 128) clips with zeros along time, pass (B, 128, T) + lengths.
    lens = torch.tensor([m.shape[1] for m in mels])
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(m).T for m in mels], batch_first=True)
    with torch.no_grad():
        out, out_len = enc(padded.mT, lens)
    return out.mT.numpy(), out_len.numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out_dir = ap.parse_args().out
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)

    wave_a, wave_b = make_clips(rng)
    mel_a, mel_b = chat_state_mel(wave_a), chat_state_mel(wave_b)
    # Same call as FilterbankFeatures.__init__ (float32, as librosa returns it).
    fb = librosa.filters.mel(sr=SR, n_fft=512, n_mels=128, fmin=0, fmax=SR / 2, norm="slaney")
    np.savez(out_dir / "features.npz", wave_a=wave_a, wave_b=wave_b, mel_a=mel_a, mel_b=mel_b, mel_filters=fb)

    enc = ConformerEncoder(**asdict(ConformerEncoderConfig(**ENCODER))).eval()
    randomize_(enc, gen)
    sd = {f"conformer.{k}": v.contiguous() for k, v in enc.state_dict().items()}
    save_file(sd, str(out_dir / "conformer.safetensors"))

    out_a, len_a = run_encoder(enc, [mel_a])
    out_b, len_b = run_encoder(enc, [mel_b])
    out_batch, len_batch = run_encoder(enc, [mel_a, mel_b])
    np.savez(
        out_dir / "encoder.npz",
        out_a=out_a,
        out_b=out_b,
        out_batch=out_batch,
        len_a=len_a,
        len_b=len_b,
        len_batch=len_batch,
    )

    (out_dir / "config.json").write_text(
        json.dumps({"preprocessor": PREPROCESSOR, "encoder": ENCODER}, indent=2)
    )
    meta = {
        "generator": "tools/golden/encoder.py",
        "reference": f"liquid-audio {version('liquid-audio')}",
        "torch": torch.__version__,
        "librosa": librosa.__version__,
        "seed": SEED,
        "mel_a": list(mel_a.shape),
        "mel_b": list(mel_b.shape),
        "out_a": list(out_a.shape),
        "out_b": list(out_b.shape),
        "out_batch": list(out_batch.shape),
        "state_dict_keys": len(sd),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
