"""An on-disk store of finished work: one record per finished cell, keyed by a hash of its config.

A record is a folder `<root>/<hash>/` holding `record.json` (the full config, its hash, the results)
and any files the cell wrote (e.g. the learned alignment). `record.json` is written last and
atomically, so a cell killed mid-way leaves no record and is simply run again; a record is reused
only when its stored config equals the requested one exactly.

A record that cannot be read (truncated, empty, not JSON, a key missing) is never reused and never a
bare JSON error: its folder is set aside to `<root>/damaged/<hash>-<n>/` with a DamagedRecordWarning
naming the file, the reason and the cell, and the cell reads as unfinished, so it is computed again.

A store knows who is using it (file locks under `<root>/locks/`, by the filelock library; the kernel
drops a dead process's locks, so a killed run never blocks another):
- `claim(config)`: a per-cell lock taken without waiting. Processes running the same cells on one store
  each run the cells they claim and wait (`wait_for`) for the others' records; `share` does all of it.
- `using()`: held by every process running on the store; `clear()` refuses while another process holds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from filelock import FileLock, Timeout

RECORD = "record.json"
RECORD_KEYS = ("hash", "config", "results")
HASH = re.compile(r"[0-9a-f]{16}")


class DamagedRecordWarning(UserWarning):
    """A record (or a file beside it) could not be read: it was set aside and its cell will run again."""


class DamagedRecordError(ValueError):
    """A record lacks a result a reader needs."""


class StoreInUse(RuntimeError):
    """Another live process is using the store, so it cannot be cleared."""


class ClaimReleased(RuntimeError):
    """A cell waited for has no record and no process holds it (its runner failed or was killed)."""


def canonical(config: Mapping[str, Any]) -> str:
    """The config as canonical JSON (sorted keys), the text that is hashed."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a config."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (to pin a record to the exact model weights it used)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def describe(config: Any) -> str:
    """A short summary of a cell's config for messages: kind, hypothesis or candidate, site, model."""
    if not isinstance(config, Mapping):
        return "config unreadable"
    parts = [str(config.get("kind", "cell"))]
    for key in ("hypothesis", "candidate"):
        if key in config:
            parts.append(f"{key} {config[key]!r}")
    site = config.get("site")
    if isinstance(site, Mapping):
        parts.append(f"site layer {site.get('layer')} position {site.get('position')!r}")
    model = config.get("model")
    if isinstance(model, Mapping) and "name" in model:
        parts.append(f"model {model['name']!r}")
    return ", ".join(parts)


def _damage(record: Any, need: Iterable[str]) -> str | None:
    """Why a parsed record cannot be used (a key missing), or None."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__}, not a record"
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        return f"lacks key(s) {missing}"
    if not isinstance(record["config"], dict) or not isinstance(record["results"], dict):
        return "its config or results are not JSON objects"
    missing = [k for k in need if k not in record["results"]]
    return f"its results lack key(s) {missing}" if missing else None


def _read(path: Path, need: Iterable[str] = ()) -> tuple[Any, str | None]:
    """(record, None) for a good record file, (what was read, reason) for a damaged one, (None, None) if none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot be read ({err})"
    if not text.strip():
        return None, "is empty"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"is truncated or not valid JSON ({err})"
    return record, _damage(record, need)


_HELD: set[str] = set()  # cell locks this process holds (a lock file is locked once per process)
_USERS: dict[str, list[Any]] = {}  # user lock path -> [FileLock, depth]: `using()` nests within a process
_GUARD = threading.Lock()


def _try_lock(path: Path) -> FileLock | None:
    """The lock at `path` taken at once, or None if another holder has it."""
    lock = FileLock(path, timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    except OSError as err:  # e.g. ENOSYS: a file system without flock
        raise OSError(f"cannot lock {path}: {err}; put the store on a file system that supports file locks") from err
    return lock


class Claim:
    """A per-cell lock taken without waiting: `held` says whether this process got it (False too while another
    claim of this process holds the cell). Use as a context manager, or call `release`."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = None if str(path) in _HELD else _try_lock(path)
        self.held = self._lock is not None
        if self.held:
            _HELD.add(str(path))

    def release(self) -> None:
        """Let another process claim the cell (done on leaving the `with` block)."""
        if self._lock is not None:
            _HELD.discard(str(self.path))
            self._lock.release()
            self._lock, self.held = None, False

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __bool__(self) -> bool:
        return self.held


class Store:
    """Records of finished cells under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"store path {self.root} is a file; give a folder (it is made if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot make the store folder {self.root}: {err.strerror or err}") from err

    def folder(self, config: Mapping[str, Any]) -> Path:
        """Where the cell with this config keeps its files."""
        return self.root / config_hash(config)

    def get(self, config: Mapping[str, Any], need: Iterable[str] = ()) -> dict[str, Any] | None:
        """The finished record for exactly this config, or None; a damaged one (or one whose results lack a
        key of `need`) is set aside with a DamagedRecordWarning and reads as None, so the cell runs again."""
        path = self.folder(config) / RECORD
        record, reason = _read(path, need)
        if reason is not None:
            self._set_aside(path.parent, f"{path} {reason}", describe(config))
            return None
        if record is None or canonical(record["config"]) != canonical(json.loads(canonical(config))):
            return None  # none yet, or a hash collision or an edited file: never reuse another config's result
        return record

    def put(self, config: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
        """Write the record of a finished cell (atomically, after its files)."""
        folder = self.folder(config)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"hash": config_hash(config), "config": json.loads(canonical(config)), "results": dict(results)}
        tmp = folder / f"{RECORD}.tmp{os.getpid()}-{threading.get_ident()}"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
        os.replace(tmp, folder / RECORD)
        return record

    def require_results(self, record: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """The record's results, or a DamagedRecordError naming its file and the first key it lacks."""
        results = record.get("results", {})
        for key in keys:
            if key not in results:
                path = self.folder(record.get("config", {})) / RECORD
                raise DamagedRecordError(f"record {path} ({describe(record.get('config'))}) lacks result {key!r}; "
                                         f"it has {sorted(results)}. Set it aside (Store.set_aside) to run the cell again")
        return dict(results)

    def set_aside(self, config: Mapping[str, Any], reason: str) -> Path | None:
        """Move the cell's folder to `<root>/damaged/<hash>-<n>/` (e.g. when a file beside its record cannot be
        read) with a DamagedRecordWarning; the cell then reads as unfinished. Returns the new place (None: nothing
        to move, or another process holds the cell and is writing it anew)."""
        return self._set_aside(self.folder(config), reason, describe(config))

    def _set_aside(self, folder: Path, reason: str, summary: str) -> Path | None:
        if str(self._lock_path(folder.name)) in _HELD:  # this process is running the cell
            return self._move_aside(folder, reason, summary)
        with self.claim_folder(folder) as claim:  # never move a folder another process is writing into
            return self._move_aside(folder, reason, summary) if claim.held else None

    def _move_aside(self, folder: Path, reason: str, summary: str) -> Path | None:
        aside = self.root / "damaged"
        aside.mkdir(exist_ok=True)
        for n in range(1, 10_000):
            target = aside / f"{folder.name}-{n}"
            if target.exists():
                continue
            try:
                os.rename(folder, target)
            except FileNotFoundError:
                return None  # nothing there (set aside by another process first)
            except OSError:
                continue  # another process took this name
            warnings.warn(f"damaged record set aside to {target}: {reason} ({summary}); the cell will run again",
                          DamagedRecordWarning, stacklevel=4)
            return target
        raise OSError(f"no free name under {aside} for {folder.name}")

    def discard(self, config: Mapping[str, Any]) -> None:
        """Remove a cell's record and files."""
        shutil.rmtree(self.folder(config), ignore_errors=True)

    def clear(self) -> int:
        """Remove every cell folder (named by a config hash) and return how many; other files (the damaged
        folder, locks) are left alone. Refuses (StoreInUse) while another live process is using the store."""
        others = self.users()
        if others:
            raise StoreInUse(f"store {self.root} is in use by {', '.join(others)}; clearing it would delete records "
                             "they are writing or reading: wait for them to finish, stop them, or give another store")
        folders = [p for p in self.root.iterdir() if p.is_dir() and HASH.fullmatch(p.name)]
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        return len(folders)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished record in the store (damaged ones are set aside, with a warning, and skipped)."""
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            if not HASH.fullmatch(path.parent.name):
                continue
            record, reason = _read(path)
            if reason is not None:
                self._set_aside(path.parent, f"{path} {reason}", describe(record.get("config") if isinstance(record, dict) else None))
            elif record is not None:
                yield record

    def __len__(self) -> int:
        return sum(1 for p in self.root.glob(f"*/{RECORD}") if HASH.fullmatch(p.parent.name))

    # ---- who is using the store --------------------------------------------------------------
    def _lock_path(self, name: str) -> Path:
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        return locks / f"{name}.lock"

    def claim(self, config: Mapping[str, Any]) -> Claim:
        """Take the cell's lock (`<root>/locks/<hash>.lock`) without waiting; `.held` says whether this process
        got it. Check `get` again once held: another process may have finished the cell just before."""
        return Claim(self._lock_path(config_hash(config)))

    def claim_folder(self, folder: Path) -> Claim:
        """The claim of the cell whose folder is `folder`."""
        return Claim(self._lock_path(folder.name))

    def wait_for(self, config: Mapping[str, Any], timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """The cell's record, once the process holding its claim wrote it. Raises ClaimReleased if no process
        holds the cell and it has no record (its runner failed or was killed: claim it and run it here), and
        TimeoutError after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if (record := self.get(config)) is not None:
                return record
            with self.claim(config) as probe:
                if probe.held:
                    if (record := self.get(config)) is not None:  # written just before its lock was released
                        return record
                    raise ClaimReleased(f"no process is running the cell {describe(config)} ({self.folder(config)}) and "
                                        "it has no record: the process that claimed it stopped without finishing it "
                                        "(it failed or was killed); claim it and run it here")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for another process to finish the cell {describe(config)} "
                                   f"({self.folder(config)}); its lock {self._lock_path(config_hash(config))} is still held")
            time.sleep(poll)

    def share(self, configs: Iterable[Mapping[str, Any]], run: Callable[[Mapping[str, Any]], Any],
              timeout: float | None = None, poll: float = 0.5) -> list[Mapping[str, Any]]:
        """Run each unfinished config (`run(config)` must `put` its record) unless another process holds it, then
        wait for the records of those others hold (running any whose runner stopped). Processes sharing a store
        and a list of configs so split the work. Returns the configs run here."""
        ran, pending = [], []
        for config in configs:
            if self.get(config) is not None:
                continue
            with self.claim(config) as claim:
                if not claim.held:
                    pending.append(config)
                elif self.get(config) is None:
                    self._run(config, run)
                    ran.append(config)
        while pending:
            config = pending.pop(0)
            try:
                self.wait_for(config, timeout, poll)
            except ClaimReleased:
                with self.claim(config) as claim:
                    if claim.held and self.get(config) is None:
                        self._run(config, run)
                        ran.append(config)
                    elif not claim.held:
                        pending.append(config)  # another process took it over meanwhile
        return ran

    def _run(self, config: Mapping[str, Any], run: Callable[[Mapping[str, Any]], Any]) -> None:
        run(config)
        if self.get(config) is None:
            raise RuntimeError(f"running the cell {describe(config)} wrote no record to {self.folder(config)}")

    @contextmanager
    def using(self) -> Iterator[Store]:
        """Mark the store as used by this process while the block runs (`<root>/locks/user-<pid>@<host>.lock`,
        held exclusively): `clear` in any other process refuses meanwhile. Nests within a process."""
        path = str(self._lock_path(f"user-{os.getpid()}@{socket.gethostname()}"))
        with _GUARD:
            if path not in _USERS:
                lock = _try_lock(Path(path))
                if lock is None:
                    raise StoreInUse(f"{path} is locked by another process with this process's id and host")
                _USERS[path] = [lock, 0]
            _USERS[path][1] += 1
        try:
            yield self
        finally:
            with _GUARD:
                _USERS[path][1] -= 1
                if _USERS[path][1] == 0:
                    _USERS.pop(path)[0].release()
                    Path(path).unlink(missing_ok=True)

    def users(self) -> list[str]:
        """The other live processes using the store ('process PID on HOST'); a dead process's file is removed."""
        own = f"user-{os.getpid()}@{socket.gethostname()}.lock"
        live = []
        for path in sorted((self.root / "locks").glob("user-*.lock")):
            if path.name == own:
                continue
            lock = _try_lock(path)
            if lock is None:
                pid, _, host = path.stem.removeprefix("user-").partition("@")
                live.append(f"process {pid} on {host}")
            else:  # its process died: the kernel released its lock
                lock.release()
                path.unlink(missing_ok=True)
        return live
