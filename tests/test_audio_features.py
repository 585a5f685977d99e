"""Log-mel front end against liquid-audio's preprocessor (fixtures: tools/golden/encoder.py)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lfm2_mlx.models.mel import PreprocessorConfig, log_mel_spectrogram, mel_filters, mel_frames_to_positions

FIXTURES = Path(__file__).parent / "fixtures" / "encoder"
HOP = 160
# Samples [6000, 9500) of wave_a are digital silence; frames 39..58 see only those samples
# (a frame t covers samples 160 t - 200 .. 160 t + 199 through its 400-sample window).
SILENT_FRAMES = slice(39, 59)


@pytest.fixture(scope="module")
def features() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "features.npz"))


@pytest.fixture(scope="module")
def cfg() -> PreprocessorConfig:
    return PreprocessorConfig.from_dict(json.loads((FIXTURES / "config.json").read_text())["preprocessor"])


def test_mel_filters_equal_librosa(features):
    # Measured: bit-identical to librosa 1.0.0's float32 output; the tolerance only allows for a
    # platform's log/exp differing in the last bit.
    fb = mel_filters(16000, 512, 128)
    assert fb.dtype == np.float32 and fb.shape == (128, 257)
    np.testing.assert_allclose(fb, features["mel_filters"], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("clip", ["a", "b"])
def test_log_mel_matches_reference(features, cfg, clip):
    wave = features[f"wave_{clip}"]
    ref = features[f"mel_{clip}"].T  # ChatState stores (128, T)
    out = np.array(log_mel_spectrogram(wave, cfg))
    assert out.dtype == np.float32
    # Every frame ChatState.add_audio keeps: 1 + n // hop, the last one past the valid length.
    assert out.shape == ref.shape == (1 + len(wave) // HOP, 128)
    # Measured max abs error 5.3e-5 (a) and 6.3e-5 (b), mean 4e-7: the reference's float32 STFT on bins
    # whose power is ~1e-7 of the frame's peak; this port computes in float64.
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


def test_no_dither(features, cfg):
    # Dither (1e-5 in the config) is training-only in the reference. Were it applied, silent frames
    # would differ from each other and from the reference (measured: 1.3e-2 on this clip).
    first = np.array(log_mel_spectrogram(features["wave_a"], cfg))
    second = np.array(log_mel_spectrogram(features["wave_a"], cfg))
    np.testing.assert_array_equal(first, second)
    silent = first[SILENT_FRAMES]
    np.testing.assert_array_equal(silent, np.broadcast_to(silent[0], silent.shape))
    np.testing.assert_allclose(silent, features["mel_a"].T[SILENT_FRAMES], rtol=0, atol=1e-4)


def test_last_frame_is_pad_value_and_excluded_from_statistics(features, cfg):
    wave = features["wave_b"]
    out = np.array(log_mel_spectrogram(wave, cfg))
    assert np.all(out[-1] == cfg.pad_value) and np.all(features["mel_b"][:, -1] == cfg.pad_value)
    # A different pad value only changes that frame: it takes no part in mean and std.
    padded = np.array(log_mel_spectrogram(wave, replace(cfg, pad_value=-3.5)))
    assert np.all(padded[-1] == -3.5)
    np.testing.assert_array_equal(padded[:-1], out[:-1])


def test_rejects_clips_too_short_to_normalise(cfg):
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(np.zeros(2 * HOP - 1, np.float32), cfg)
    rng = np.random.default_rng(0)
    assert log_mel_spectrogram(rng.standard_normal(2 * HOP).astype(np.float32), cfg).shape == (3, 128)
    with pytest.raises(ValueError, match="mono"):
        log_mel_spectrogram(np.zeros((2, 16000), np.float32), cfg)


def test_config_from_dict():
    d = json.loads((FIXTURES / "config.json").read_text())["preprocessor"]
    assert PreprocessorConfig.from_dict({**d, "unknown_key": 1}) == PreprocessorConfig.from_dict(d)
    missing = {k: v for k, v in d.items() if k != "n_fft"}
    with pytest.raises(ValueError, match="config.json: preprocessor is missing 'n_fft'"):
        PreprocessorConfig.from_dict(missing)
    with pytest.raises(ValueError, match="normalize"):
        PreprocessorConfig.from_dict({**d, "normalize": "all_features"})
    with pytest.raises(ValueError, match="pad_to"):
        PreprocessorConfig.from_dict({**d, "pad_to": 16})


def test_mel_frames_to_positions(features):
    encoder = np.load(FIXTURES / "encoder.npz")
    for clip in "ab":
        # The reference encoder's output length for the clip alone.
        assert mel_frames_to_positions(features[f"mel_{clip}"].shape[1]) == int(encoder[f"len_{clip}"][0])
    assert [mel_frames_to_positions(n) for n in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]
