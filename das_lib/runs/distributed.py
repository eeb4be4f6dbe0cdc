"""Running a sweep's cells on Dask distributed (https://distributed.dask.org): one task per cell.

Workers load the model once, keep the caches of the cells they run, and write to the same store, which
must be on a file system every worker sees (see das_lib.runs.sweep for a cluster set-up).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm


@contextmanager
def dask_client(scheduler: str = "", workers: int = 1) -> Iterator[Any]:
    """A Dask client for `Sweep.run`: connected to `scheduler` (an address or a scheduler file), or for
    `workers` > 1 to a LocalCluster of that many single-threaded worker processes; None (run here) otherwise."""
    if not scheduler and workers <= 1:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler:
        is_file = scheduler.endswith(".json") and Path(scheduler).exists()
        with Client(scheduler_file=scheduler) if is_file else Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client

def run_on_dask(
    job: Callable[[dict[str, Any], str, str], Any], configs: list[dict[str, Any]], client: Any, store_root: str,
    device: str, gpu: bool, progress: bool, key: Callable[[dict[str, Any]], str],
) -> None:
    """Submit `job(config, store_root, device)` for every config, earlier ones first (neighbours share a
    worker's cache); with `gpu`, each task asks for a worker resource GPU=1. Raises a failed cell's error."""
    from dask.distributed import as_completed

    futures = [
        client.submit(job, c, store_root, device, key=key(c), pure=False,
                      priority=len(configs) - i, resources={"GPU": 1} if gpu else None)
        for i, c in enumerate(configs)
    ]
    bar = tqdm(total=len(futures), desc="sweep", unit="cell", disable=not progress or not futures)
    try:
        for future in as_completed(futures):
            future.result()  # raises a failed cell's error here
            bar.update()
    finally:
        bar.close()
