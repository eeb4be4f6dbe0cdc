"""The committed stores of the chapters whose evidence costs more than a build affords: how one is made.

    python -m das_lib.book.stores regenerate finetuned programs      # chapters 8 and 9: hours on 2 cores (see a manifest)

runs each chapter with its default parameters (papermill), its store being the committed one
(das_lib/assets/stores/NAME) and its check of the committed cells off, all chapters at once (their cells are
claimed, so processes sharing a store never train a cell twice; `prefetch` starts chapter 8's random-weights
grid in a process of its own). Then it keeps the alignment files of the cells the chapter read back (listed as
it runs: `DAS_LIB_READ_LOG`) and the records of all others (`committed.prune`), and writes the manifest: when,
where, how long, and the command. A build then reads the cells from there and retrains the chosen ones to check
them (das_lib.runs.committed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from das_lib.runs import committed
from das_lib.runs.grid import READ_LOG

BOOK = Path(__file__).resolve().parents[2] / "book"
CHAPTERS = {"finetuned": "08_finetuned.ipynb", "programs": "09_programs.ipynb"}


def _chapter(name: str, out: Path, log: Path) -> subprocess.Popen:
    store = committed.path(name)
    args = [sys.executable, "-m", "papermill", str(BOOK / CHAPTERS[name]), str(out / CHAPTERS[name]), "--cwd", str(BOOK),
            "-p", "store", str(store), "-p", "committed_store", "", "-p", "verify", "False", "-p", "threads", "1"]
    return subprocess.Popen(args, env={**os.environ, READ_LOG: str(log)})


def regenerate(names: list[str], out: Path) -> dict[str, float]:
    """Run the chapters `names` into their committed stores (see the module docstring); returns each one's hours."""
    out.mkdir(parents=True, exist_ok=True)
    start, logs, procs = time.time(), {}, {}
    for name in names:
        committed.path(name).mkdir(parents=True, exist_ok=True)
        logs[name] = out / f"{name}-read.log"
        logs[name].write_text("")
        procs[name] = _chapter(name, out, logs[name])
    if "finetuned" in names:
        procs["prefetch"] = subprocess.Popen([sys.executable, "-m", "das_lib.book.stores", "prefetch"])
    hours = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"regenerating {name!r} failed (exit {proc.returncode}); its output is in {out}")
        hours[name] = (time.time() - start) / 3600
    for name in names:
        keep = set(logs[name].read_text().split())
        deleted = committed.prune(committed.path(name), keep)
        manifest = {"command": f"python -m das_lib.book.stores regenerate {' '.join(names)}",
                    "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                    "hours": hours[name], "alignments kept": len(keep), "alignments pruned": deleted}
        (committed.path(name) / committed.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return hours


def prefetch() -> None:
    """Train chapter 8's random-weights grid (its default parameters) into the committed store, then the model's
    own grid, while the chapter trains the model's grid: the chapter finds cells done (or held, and waits)."""
    import papermill
    import torch

    from das_lib.runs import calibration, controls, sweep
    from das_lib.runs.grid import Grid

    torch.set_num_threads(1)
    values = {k: v["default"] for k, v in papermill.inspect_notebook(str(BOOK / CHAPTERS["finetuned"])).items()}
    values = {k: eval(v) for k, v in values.items()}  # noqa: S307  (the chapter's own literals)
    store = str(committed.path("finetuned"))
    spec = sweep.spec_from_params(values, values["budgets"][0])
    control_spec = controls.control_spec(spec, values["control"], values["control_layers"], values["control_positions"])
    ladder = calibration.calibrate(control_spec, values["control"], f"{store}/control", values["budgets"])
    used = values["budget"] or calibration.calibrated(ladder) or values["budgets"][-1]
    controls.random_weights(calibration.with_budget(spec, used), f"{store}/null")
    Grid(calibration.with_budget(spec, used), store).run()  # then help with the model's own grid (cells are claimed)


def main(argv: list[str] | None = None) -> None:
    """The command line of the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    regen = sub.add_parser("regenerate", help="run chapters into their committed stores")
    regen.add_argument("names", nargs="+", choices=sorted(CHAPTERS))
    regen.add_argument("--out", default="_build/stores", help="where the executed chapters and logs go")
    sub.add_parser("prefetch", help="chapter 8's random-weights grid (started by regenerate)")
    args = parser.parse_args(argv)
    if args.command == "regenerate":
        print(regenerate(args.names, Path(args.out)))
    else:
        prefetch()


if __name__ == "__main__":
    main()
