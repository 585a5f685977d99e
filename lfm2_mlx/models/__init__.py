"""Model parts: mel front end, FastConformer encoder, depthformer, and the LFM2-Audio root model."""
