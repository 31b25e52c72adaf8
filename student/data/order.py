"""The epoch order: which frames each (rank, worker) yields, in which order. Pure functions
of the plan's block sizes, the config, the epoch and the world: no data is read here.

1. Blocks (runs of frames within one shard) are shuffled by (seed, epoch) and laid end
   to end: the epoch's frame sequence.
2. Ranks take contiguous, near-equal spans of it (sizes differ by at most one frame; with
   `drop_last` every rank gets the same number of full batches and the tail is dropped).
3. A rank's span is cut into batches, and its workers take contiguous runs of whole
   batches, so that only the rank's last batch can be short.
4. A worker reads its run in sequence and mixes it through a shuffle buffer
   (`buffer_order`), seeded by (seed, epoch, rank, worker).
5. PyTorch's DataLoader hands out the workers' batches round-robin, skipping a worker
   that has none left (`delivery`): that interleaving is the order a training loop sees.

Every frame of the plan is yielded exactly once per epoch by exactly one (rank, worker),
with no sample repeated to even out the shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Share:
    """What one worker of one rank yields in an epoch."""

    read: np.ndarray
    """(n,) indices into the epoch's flat frame list, in the order they are read."""
    emit: np.ndarray
    """(n,) positions into `read`, in the order they are yielded."""


def block_order(num_blocks: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """A permutation of the blocks: store order, or shuffled by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_blocks)
    return np.random.default_rng([seed, epoch, 0x5B]).permutation(num_blocks)


def rank_span(total: int, rank: int, world: int, batch_size: int, drop_last: bool,
              ) -> tuple[int, int]:
    """[start, stop) of a rank's frames in the epoch sequence of `total` frames."""
    if drop_last:
        each = total // (world * batch_size) * batch_size
        return rank * each, (rank + 1) * each
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def dropped(total: int, world: int, batch_size: int, drop_last: bool) -> int:
    """Frames of an epoch that no rank yields (only with drop_last)."""
    return total - world * (total // (world * batch_size) * batch_size) if drop_last else 0


def worker_batches(count: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[first, stop) batch indices of each worker of a rank yielding `count` frames:
    contiguous runs of batches, sizes differing by at most one."""
    batches = -(-count // batch_size)
    base, extra = divmod(batches, workers)
    spans, start = [], 0
    for w in range(workers):
        stop = start + base + (w < extra)
        spans.append((start, stop))
        start = stop
    return spans


def buffer_order(n: int, buffer: int, rng: np.random.Generator | None) -> np.ndarray:
    """Positions 0..n-1 in the order a shuffle buffer of `buffer` items yields them when
    fed in order: filled first, then each new item replaces a randomly drawn one that is
    yielded; the rest leave in random order. An item is yielded at most `buffer` places
    before it is read, so a reader holds at most `buffer` items. rng None: in order."""
    if rng is None or n == 0:
        return np.arange(n)
    size = min(buffer, n)
    held = list(range(size))
    out = np.empty(n, dtype=np.int64)
    draws = rng.integers(0, size, n - size) if n > size else ()
    for t, j in enumerate(draws):
        out[t] = held[j]
        held[j] = size + t
    out[n - size:] = np.asarray(held)[rng.permutation(size)]
    return out


def share(sizes: list[int], rank: int, world: int, worker: int, workers: int,
          seed: int, epoch: int, batch_size: int, drop_last: bool, shuffle: bool,
          buffer: int) -> Share:
    """The frames one worker of one rank yields in `epoch`; `sizes` are the plan's block
    lengths, frames numbered block after block in plan order."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = block_order(len(sizes), seed, epoch, shuffle)
    sequence = (np.concatenate([np.arange(starts[b], starts[b + 1]) for b in order])
                if len(sizes) else np.zeros(0, np.int64))
    start, stop = rank_span(len(sequence), rank, world, batch_size, drop_last)
    first, last = worker_batches(stop - start, batch_size, workers)[worker]
    read = sequence[start:stop][first * batch_size:last * batch_size]
    rng = np.random.default_rng([seed, epoch, rank, worker, 0xB0F]) if shuffle else None
    return Share(read=read, emit=buffer_order(len(read), buffer, rng))


def delivery(batches: list[int], delivered: int) -> tuple[list[int], int]:
    """After a DataLoader handed out `delivered` batches of workers holding `batches`
    each (round-robin, a worker with none left skipped): (batches each worker has handed
    out, the worker that hands out the next one)."""
    if delivered > sum(batches):
        raise ValueError(f"{delivered} batches delivered, but the workers hold only "
                         f"{sum(batches)}")
    taken = [0] * len(batches)
    count, w = 0, 0
    while count < delivered:
        if taken[w] < batches[w]:
            taken[w] += 1
            count += 1
        w = (w + 1) % len(batches)
    return taken, w
