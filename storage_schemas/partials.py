"""Finished pieces of a stage's work on a scene that is not committed yet, kept in the
store so that a killed job resumes where it stopped instead of from scratch:

    <root>/partial/<scene_id>/<key>/<name>.npz     one piece: named numpy arrays

`root` is the stage's folder (`feature_runs/<family>`, `teacher_runs`). `key` hashes what
the pieces are computed from: the job's identity (its config and the weights or the
checkpoint it runs) and the content fingerprints of the scene's inputs; a piece is read
back only under the same key, so work done on other images or by another teacher is
never reused. A piece that does not read, or does not have the shapes and dtypes asked
for, is recomputed, never trusted. The stage drops a scene's pieces once it commits.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .store import Store, remove_or_warn


def partial_prefix(root: str, scene_id: str, identity: Mapping[str, Any]) -> str:
    """Where a scene's pieces of one job identity (JSON-able) are kept."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return f"{root}/partial/{scene_id}/{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def drop_pieces(store: Store, root: str, scene_id: str) -> None:
    """Remove every piece kept for a scene under `root` (after its commit: what cannot be
    removed is a warning naming it, never a failure of the commit)."""
    remove_or_warn(store, f"{root}/partial/{scene_id}", "the pieces of a committed scene")


class Pieces:
    """The pieces kept under one prefix: `get(name)` / `put(name, arrays)`."""

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix = store, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}.npz"

    def get(self, name: str, expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
            ) -> dict[str, np.ndarray] | None:
        """The piece's arrays, or None when it is absent, unreadable, or its arrays are not
        `expected` (name -> (shape, dtype))."""
        data = self.store.location.get(self.key(name))
        if data is None:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError):
            return None  # a damaged piece is recomputed
        if expected is not None and {k: (a.shape, str(a.dtype)) for k, a in arrays.items()} != {
                k: (tuple(shape), str(np.dtype(dtype))) for k, (shape, dtype) in
                expected.items()}:
            return None
        return arrays

    def put(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        self.store.location.put(self.key(name), buffer.getvalue())
