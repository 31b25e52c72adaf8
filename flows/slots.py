"""Device slots: teacher fits, renders and feature extraction each hold one while they
work, so that N devices run at most N such steps at once. Three kinds, one interface:

- `local` (the thread runner): a semaphore of `device_slots` in the flow's process;
- `dask`: Dask worker resources: each worker of the cluster offers `device=1` and device
  steps ask for one (`dask.annotate`), so a worker runs one at a time and a dead
  worker's slot goes with it;
- `prefect:<name>`: a strict Prefect global concurrency limit of `device_slots`, created
  by the flow, for several flow runs sharing devices through one Prefect server. Slots are
  leases: a killed holder's slot comes back only when the server revokes its lease
  (measured: not within 150 s on the local ephemeral API), so this kind is opt-in.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import AbstractContextManager

LEASE_S = 60
"""Lease of a Prefect slot, renewed while its holder lives."""
RESOURCE = "device"
"""The Dask worker resource device steps ask for."""

_local: dict[str, threading.BoundedSemaphore] = {}
_local_lock = threading.Lock()


def prepare_slots(kind: str, slots: int) -> None:
    """Create what `kind` needs before steps ask for slots (in the flow's process)."""
    if kind == "local":
        with _local_lock:
            _local["local"] = threading.BoundedSemaphore(slots)
    elif kind.startswith("prefect:"):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(kind.split(":", 1)[1], slots)


def slot(kind: str) -> AbstractContextManager:
    """What a device step holds while it works."""
    if kind == "local":
        return _local["local"]
    if kind.startswith("prefect:"):
        from prefect.concurrency.sync import concurrency

        return concurrency(kind.split(":", 1)[1], occupy=1, strict=True,
                           lease_duration=LEASE_S)
    return contextlib.nullcontext()  # dask: the scheduler placed it on a free worker


def submit_context(kind: str, device: bool) -> AbstractContextManager:
    """Around the submission of a step: a device step on Dask asks for the resource."""
    if kind == "dask" and device:
        import dask

        return dask.annotate(resources={RESOURCE: 1})
    return contextlib.nullcontext()
