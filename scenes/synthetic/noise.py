"""Deterministic procedural noise (value noise and fractal sums), vectorised in numpy.

Integer lattice points are hashed with 32-bit integer mixing, so the same inputs give
bit-identical outputs on every run and machine; no global random state is touched.
"""

from __future__ import annotations

import numpy as np

_PRIMES = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))


def hash_uniform(cells: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) value per integer cell; cells (N, D) int64 with D <= 3; returns (N,)."""
    cells = np.asarray(cells)
    h = np.full(cells.shape[0], np.uint32(seed * 0x9E3779B1 & 0xFFFFFFFF), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for axis in range(cells.shape[1]):
            h ^= cells[:, axis].astype(np.int64).astype(np.uint32) * _PRIMES[axis]
            h = (h ^ (h >> np.uint32(15))) * np.uint32(0x2C1B3C6D)
        h = (h ^ (h >> np.uint32(12))) * np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
    return h.astype(np.float64) / 4294967296.0


def value_noise(coords: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1]; coords (N, D) float, D in {1, 2, 3}; returns (N,)."""
    coords = np.asarray(coords, dtype=np.float64)
    base = np.floor(coords)
    frac = coords - base
    weight = frac * frac * (3.0 - 2.0 * frac)
    base = base.astype(np.int64)
    dims = coords.shape[1]
    out = np.zeros(coords.shape[0])
    for corner in range(1 << dims):
        offset = np.array([(corner >> axis) & 1 for axis in range(dims)], dtype=np.int64)
        w = np.ones(len(coords))
        for axis in range(dims):
            w = w * (weight[:, axis] if offset[axis] else 1.0 - weight[:, axis])
        out += w * hash_uniform(base + offset, seed)
    return out


def fbm(coords: np.ndarray, seed: int, octaves: int = 4, lacunarity: float = 2.0,
        gain: float = 0.5) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]; coords (N, D); returns (N,)."""
    total = np.zeros(len(coords))
    amplitude, norm, scale = 1.0, 0.0, 1.0
    for octave in range(octaves):
        total += amplitude * value_noise(coords * scale, seed + 101 * octave)
        norm += amplitude
        amplitude *= gain
        scale *= lacunarity
    return total / norm
