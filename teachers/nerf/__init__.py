"""EmerNeRF-style per-scene neural-field teacher (in progress: encodings and rendering
math first; the field, sampler, fit loop and outputs follow)."""
