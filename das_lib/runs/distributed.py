"""Running a sweep's cells on Dask distributed (https://distributed.dask.org): one task per cell.

Workers load the model once, keep the caches of the cells they run, and write to the same store, which
must be on a file system every worker sees (see das_lib.runs.sweep for a cluster set-up).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler before saying it cannot be reached (Dask's default: 30)


def connect(scheduler: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A Client of the running cluster at `scheduler` (an address, or a scheduler file ending in .json); a
    ConnectionError naming it when it cannot be reached within `timeout` seconds."""
    from dask.distributed import Client

    if scheduler.endswith(".json") and not Path(scheduler).is_file():
        raise FileNotFoundError(f"scheduler file {scheduler!r} does not exist: give the file `dask scheduler "
                                "--scheduler-file` wrote, or the scheduler's address (tcp://host:8786)")
    where = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    try:
        return Client(**where, timeout=timeout)
    except (OSError, TimeoutError) as err:  # Dask raises OSError("Timed out trying to connect ...")
        raise ConnectionError(f"could not reach the Dask scheduler {scheduler!r} within {timeout:g} s: is it running, "
                              f"and is the address right (e.g. tcp://host:8786)? ({err})") from None


@contextmanager
def dask_client(scheduler: str = "", workers: int = 1, connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A Dask client for `Sweep.run`: connected to `scheduler` (an address or a scheduler file; see `connect`),
    or for `workers` > 1 to a LocalCluster of that many single-threaded worker processes; None (run here) otherwise."""
    if not scheduler and workers <= 1:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with connect(scheduler, connect_timeout) as client:
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
