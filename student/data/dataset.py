"""The streaming dataset over prepared stores, and the loader that makes it resumable.

`StoreDataset` is a torch `IterableDataset`: each DataLoader worker of each rank yields
its share of the epoch (`order.share`), reading its frames block by block and mixing them
through its shuffle buffer, holding at most the buffer and one block in memory whatever
the stores' size. `StoreLoader` wraps a DataLoader around it, counts the batches it hands
out, and gives a `state_dict()` from which a job killed after batch k resumes at batch
k + 1 with the rest of the epoch in the uninterrupted order.

    dataset = StoreDataset(["s3://bucket/store.zarr"], LoaderConfig(
        fields=("rgb", "intrinsics", "cam_to_world", "teacher_depth"), batch_size=4,
        resize=(228, 128), split="train"))
    loader = StoreLoader(dataset, num_workers=2)
    loader.load_state_dict(checkpoint["loader"])      # when resuming
    for batch in loader: ...; checkpoint["loader"] = loader.state_dict()
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distillprep.storage_schemas.feature_runs import FeatureBasis
from distillprep.storage_schemas.store import Store

from .config import LoaderConfig, LoaderConfigError, LoaderError
from .order import delivery, dropped, rank_span, share, worker_batches
from .plan import Plan, build_plan
from .read import FrameReader

STATE_FORMAT = "distillprep-loader-state"
STATE_VERSION = 1


def world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else torch.distributed's, else (0, 1)."""
    if rank is None and world_size is None and torch.distributed.is_available() \
            and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise LoaderConfigError(f"rank {rank} is not within world size {world_size}")
    return rank, world_size


class StoreDataset(IterableDataset):
    """One rank's frames of one or more stores (module docstring); the plan is built and
    checked here, at the start, so a missing array fails before any worker starts."""

    def __init__(self, stores: list[str | Store] | str | Store,
                 config: LoaderConfig | None = None, *, rank: int | None = None,
                 world_size: int | None = None, storage_options: dict | None = None):
        super().__init__()
        stores = [stores] if isinstance(stores, str | Store) else list(stores)
        self.config = config or LoaderConfig()
        self.plan: Plan = build_plan(stores, self.config, storage_options)
        self.rank, self.world_size = world(rank, world_size)
        self.frames = [f for block in self.plan.blocks for f in block]
        self._block_sizes = [len(b) for b in self.plan.blocks]
        self._block_of = np.repeat(np.arange(len(self.plan.blocks)), self._block_sizes)
        self.epoch = 0
        self.resume_batches = 0
        """Batches of this epoch already handed out (set by StoreLoader on resume)."""
        self.peak_held = 0
        """Most frames this process's iterator held at once (buffer + read group)."""
        self.reader: FrameReader | None = None

    # -- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Frames this rank yields per epoch."""
        start, stop = rank_span(len(self.frames), self.rank, self.world_size,
                                self.config.batch_size, self.config.drop_last)
        return stop - start

    def num_batches(self) -> int:
        return math.ceil(len(self) / self.config.batch_size)

    def dropped_frames(self) -> int:
        """Frames of each epoch no rank yields (drop_last's tail)."""
        return dropped(len(self.frames), self.world_size, self.config.batch_size,
                       self.config.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (the order is a function of seed and epoch)."""
        self.epoch, self.resume_batches = int(epoch), 0

    def feature_basis(self, family: str) -> FeatureBasis:
        """The PCA of a feature family's run (`features ~ mean + basis^T z`, plus the
        positional pattern when the run took one out): the same for every store read,
        else an error naming the two that differ."""
        from distillprep.storage_schemas.feature_runs import read_run
        from distillprep.storage_schemas.store import open_store

        found: tuple[str, FeatureBasis] | None = None
        for location in self.plan.locations:
            store = open_store(location, storage_options=self.plan.storage_options)
            saved = read_run(store, family)
            if saved is None:
                raise LoaderError(f"store {location} has no {family} feature run "
                                  f"(feature_runs/{family}/run.json): run `distillprep "
                                  f"features` on it")
            basis = saved[1]
            if found is None:
                found = (location, basis)
            elif not all(_same(getattr(found[1], k), getattr(basis, k))
                         for k in ("basis", "mean", "pattern")):
                raise LoaderError(f"the {family} features of store {location} were reduced "
                                  f"with another PCA than those of store {found[0]}: "
                                  "extract them in one run to stream them together")
        assert found is not None  # a plan has at least one store
        return found[1]

    # -- iteration -------------------------------------------------------------------------
    def share_for(self, worker: int, workers: int):
        c = self.config
        return share(self._block_sizes, self.rank, self.world_size, worker, workers,
                     c.seed, self.epoch, c.batch_size, c.drop_last, c.shuffle,
                     c.shuffle_buffer)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        c = self.config
        counts = [b - a for a, b in worker_batches(len(self), c.batch_size, workers)]
        taken, first = delivery(counts, self.resume_batches)
        # after a resume the DataLoader starts its round-robin at worker 0: rotating the
        # shares makes it hand out the rest of the epoch in the uninterrupted order
        stream = (first + worker) % workers
        if self.reader is None:
            self.reader = FrameReader(self.plan)
        yield from self._realize(self.share_for(stream, workers), taken[stream] * c.batch_size)

    def _realize(self, part, skip: int) -> Iterator[dict[str, Any]]:
        """Yield `part`'s frames in emit order past the first `skip`, reading each run of
        one block once, in read order, and holding a frame only until its turn."""
        read, emit = part.read, part.emit[skip:]
        needed = set(emit.tolist())
        groups, start = [], 0
        for pos in range(1, len(read) + 1):
            if pos == len(read) or self._block_of[read[pos]] != self._block_of[read[start]]:
                groups.append((start, pos))
                start = pos
        held: dict[int, dict[str, Any]] = {}
        g = 0
        for pos in emit.tolist():
            while pos not in held:
                lo, hi = groups[g]
                g += 1
                wanted = [p for p in range(lo, hi) if p in needed]
                if wanted:
                    samples = self.reader.read([self.frames[read[p]] for p in wanted],
                                               self.epoch)
                    held.update(zip(wanted, samples, strict=True))
                    self.peak_held = max(self.peak_held, len(held))
            needed.discard(pos)
            yield held.pop(pos)


def worker_context():
    """The multiprocessing context loader workers start from: a fork server that has
    imported the loader. Forking the training process itself is not safe here: the zarrs
    codec pipeline's thread pool, once used in a process, does not exist in its forked
    children, and their first read hangs (seen with 2 workers); the fork server never
    reads, and forking it is fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and np.array_equal(a, b))


class StoreLoader:
    """A DataLoader over a StoreDataset that knows where it is in the epoch.

    Iterating continues from the loader's position (the start of an epoch, or where a
    loaded state or a broken-off loop left it); an epoch iterated to its end moves the
    loader to the next. Workers are started per iteration (persistent workers would not
    see the position)."""

    def __init__(self, dataset: StoreDataset, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, multiprocessing_context=None):
        self.dataset, self.num_workers = dataset, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.batches_seen = 0

    def __len__(self) -> int:
        return self.dataset.num_batches()

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.batches_seen = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.resume_batches = self.batches_seen
        context = self.multiprocessing_context
        if context is None and self.num_workers > 0:
            context = worker_context()
        loader = DataLoader(self.dataset, batch_size=self.dataset.config.batch_size,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor,
                            multiprocessing_context=context,
                            # its own seed source: iterating must not draw from the
                            # global RNG (a resumed run would draw differently)
                            generator=torch.Generator().manual_seed(0))
        for batch in loader:
            self.batches_seen += 1
            yield batch
        self.set_epoch(self.dataset.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: plain values, for a checkpoint (torch.save with
        weights_only loading, JSON, ...)."""
        d, c = self.dataset, self.dataset.config
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": d.epoch,
                "batches_seen": self.batches_seen, "plan": d.plan.fingerprint,
                "rank": d.rank, "world_size": d.world_size,
                "workers": max(1, self.num_workers), "batch_size": c.batch_size,
                "seed": c.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; refused (LoaderConfigError naming what differs) when it
        was saved over other stores or settings, which would not give the same order."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LoaderConfigError(f"not a loader state: {str(state)[:120]}")
        if state.get("version") != STATE_VERSION:
            raise LoaderConfigError(f"loader state version {state.get('version')!r}; this "
                                    f"distillprep reads version {STATE_VERSION}")
        now = self.state_dict()
        differs = [f"{k} {state.get(k)!r} (now {now[k]!r})"
                   for k in ("plan", "rank", "world_size", "workers", "batch_size", "seed")
                   if state.get(k) != now[k]]
        if differs:
            raise LoaderConfigError(
                "the loader state was saved with other settings, so the rest of its epoch "
                f"cannot be replayed in order: {'; '.join(differs)} (plan: the stores' "
                "commits and the LoaderConfig)")
        batches = int(state["batches_seen"])
        if not 0 <= batches <= len(self):
            raise LoaderConfigError(f"loader state: {batches} batches seen, but an epoch of "
                                    f"this rank has {len(self)}")
        self.dataset.set_epoch(int(state["epoch"]))
        self.batches_seen = batches
