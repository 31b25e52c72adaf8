"""Reading prepared samples: a plain Python API over a store.

`read_sample` returns every array of one camera sample as a dict of numpy arrays;
`iter_samples` walks scenes shard by shard (each shard read once, sequentially).
Stores open read-only unless asked otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from .errors import SchemaViolationError
from .manifest import SAMPLE_ARRAYS
from .store import Store, open_store

# Arrays indexed by sample, read with every sample (JPEG bytes come back decoded as `rgb`).
_PER_SAMPLE_TABLES = ("intrinsics", "cam_to_world", "timestamp_us", "camera_index",
                      "frame_index")


def decode_jpeg(data: np.ndarray, nbytes: int, where: str) -> np.ndarray:
    """(H, W, 3) uint8 from the first `nbytes` of a padded JPEG byte row."""
    try:
        with Image.open(io.BytesIO(data[:nbytes].tobytes())) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise SchemaViolationError(f"{where}: stored JPEG does not decode: {exc}") from None


class SceneReader:
    """One committed scene of a store, its small tables cached in memory."""

    def __init__(self, store: Store, scene_id: str):
        self.store, self.scene_id = store, scene_id
        self.group = store.group(scene_id)
        self.attrs = store.scene_attrs(scene_id)
        self.tables = {name: self.group[name][...] for name in _PER_SAMPLE_TABLES}
        self.ego_to_world = self.group["ego_to_world"][...]
        self.jpeg_nbytes = self.group["rgb_jpeg_nbytes"][...]
        self.sample_arrays = [n for n in SAMPLE_ARRAYS if n in self.group]

    def __len__(self) -> int:
        return self.attrs.num_samples

    def _assemble(self, index: int, block: dict[str, np.ndarray], offset: int) -> dict[str, Any]:
        where = f"scene {self.scene_id!r}, sample {index}"
        sample: dict[str, Any] = {"scene_id": self.scene_id, "sample_index": index}
        for name, data in block.items():
            if name == "rgb_jpeg":
                sample["rgb"] = decode_jpeg(data[offset], int(self.jpeg_nbytes[index]), where)
            else:
                sample[name] = data[offset]
        for name, table in self.tables.items():
            sample[name] = table[index]
        sample["camera"] = self.attrs.cameras[int(self.tables["camera_index"][index])]
        sample["ego_to_world"] = self.ego_to_world[int(self.tables["frame_index"][index])]
        return sample

    def read(self, index: int) -> dict[str, Any]:
        """All arrays of camera sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"scene {self.scene_id!r} has {len(self)} samples, not {index}")
        block = {name: self.group[name][index: index + 1] for name in self.sample_arrays}
        return self._assemble(index, block, 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Samples in order, reading one shard of every array at a time."""
        step = self.shard_length()
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            block = {name: self.group[name][start:stop] for name in self.sample_arrays}
            for index in range(start, stop):
                yield self._assemble(index, block, index - start)

    def shard_length(self) -> int:
        array: zarr.Array = self.group["rgb_jpeg"]
        shards = array.shards or array.chunks
        return int(shards[0])


def read_sample(store: Store | str | Path, scene_id: str, index: int) -> dict[str, Any]:
    """Every array of one camera sample as a dict of numpy arrays (plus `camera` name)."""
    store = store if isinstance(store, Store) else open_store(store)
    return SceneReader(store, scene_id).read(index)


def iter_samples(store: Store | str | Path, scene_ids: list[str] | None = None,
                 ) -> Iterator[dict[str, Any]]:
    """Every sample of the committed scenes (all, or those named), shard by shard."""
    store = store if isinstance(store, Store) else open_store(store)
    for scene_id in store.scenes() if scene_ids is None else scene_ids:
        yield from SceneReader(store, scene_id)
