"""Audio-out decoders (codes -> 24 kHz PCM): Mimi and the LFM2.5 detokenizer, whole and streaming."""
