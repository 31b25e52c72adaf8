"""Reading prepared samples: a plain Python API over a store.

`read_sample` returns every array of one camera sample as a dict of numpy arrays;
`iter_samples` walks scenes shard by shard (each shard read once, sequentially).
Stores open read-only unless asked otherwise.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from PIL import Image
from zarr.core.sync import sync

from .errors import SchemaViolationError
from .manifest import SAMPLE_ARRAYS
from .scene_view import read_error
from .spec import ARRAYS
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
    """One committed scene of a store (its current stages), small tables cached in memory.

    `arrays` None: every per-sample array of the current stages and the tables `read`
    needs; else only the arrays named (per-sample ones, along N or V, opened for block
    reads; the others read whole into `tables`): nothing else is opened or read."""

    def __init__(self, store: Store, scene_id: str, arrays: tuple[str, ...] | None = None):
        self.store, self.scene_id = store, scene_id
        self.view = store.scene(scene_id)
        self.attrs = self.view.attrs
        if arrays is None:
            names = [n for n in self.view.array_names()
                     if n in SAMPLE_ARRAYS or n in (*_PER_SAMPLE_TABLES, "ego_to_world",
                                                    "rgb_jpeg_nbytes")]
        else:
            names = list(arrays)
        # Everything opened once and concurrently (a lookup by name reads an array's
        # metadata again); per-sample arrays stay open for concurrent block reads.
        tables, self.sample_arrays = self._named(sync, self._open(names), "its arrays' "
                                                 "metadata and small tables")
        self.ego_to_world = tables.pop("ego_to_world", None)
        self.jpeg_nbytes = tables.pop("rgb_jpeg_nbytes", None)
        self.tables = tables

    def __len__(self) -> int:
        return self.attrs.num_samples

    async def _open(self, names: list[str]):
        zarr_store = self.store.location.zarr_store()
        groups = {}
        for stage in {ARRAYS[n].stage for n in names}:
            groups[stage] = await zarr.api.asynchronous.open_group(
                store=zarr_store, path=self.view.group_path(stage), mode="r")
        arrays = dict(zip(names, await asyncio.gather(
            *(groups[ARRAYS[n].stage].getitem(n) for n in names)), strict=True))
        small = [n for n in names if not ARRAYS[n].per_sample]
        values = await asyncio.gather(*(arrays[n].getitem(Ellipsis) for n in small))
        tables = {n: np.asarray(v) for n, v in zip(small, values, strict=True)}
        samples = {n: arrays[n] for n in names if ARRAYS[n].per_sample}
        return tables, samples

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
        return self._assemble(index, self.read_block(index, index + 1), 0)

    def read_block(self, start: int, stop: int, names: tuple[str, ...] | None = None,
                   ) -> dict[str, np.ndarray]:
        """Samples start..stop-1 of every per-sample array (or those named), the arrays
        read concurrently (their decoding overlaps on several cores); an array whose
        bytes do not read is a StoreReadError naming the scene, the array and its
        folder."""
        arrays = [(n, a) for n, a in self.sample_arrays.items() if names is None or n in names]

        async def read_all():
            return await asyncio.gather(*(array.getitem(slice(start, stop))
                                          for _, array in arrays), return_exceptions=True)

        blocks = sync(read_all())
        for (name, _), block in zip(arrays, blocks, strict=True):
            if isinstance(block, IndexError | TypeError):
                raise block
            if isinstance(block, Exception):
                folder = (f"{self.store.location.location.rstrip('/')}/"
                          f"{self.view.group_path(ARRAYS[name].stage)}/{name}")
                raise read_error(block, f"scene {self.scene_id!r}, array {name} ({folder}): "
                                        f"cannot read samples {start}..{stop - 1}") from None
        return {name: np.asarray(data) for (name, _), data in zip(arrays, blocks, strict=True)}

    def _named(self, run, coroutine, what: str):
        """run(coroutine), any failure to read or decode stored bytes turned into a
        StoreReadError naming the scene, what was read and where."""
        try:
            return run(coroutine)
        except (IndexError, TypeError):
            raise
        except Exception as exc:  # noqa: BLE001 - codecs and shard indexes raise anything
            raise read_error(exc, f"scene {self.scene_id!r} of store "
                                  f"{self.store.location.location}: cannot read {what}"
                                  ) from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Samples in order, reading one shard of every array at a time."""
        step = self.shard_length()
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            block = self.read_block(start, stop)
            for index in range(start, stop):
                yield self._assemble(index, block, index - start)

    def shard_length(self) -> int:
        array = self.sample_arrays["rgb_jpeg"]
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
