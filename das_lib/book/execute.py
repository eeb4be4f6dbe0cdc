"""Executing the book's chapters with papermill, for the site (`make book`) and the tests (`make test`).

Chapters are committed without outputs; this module writes executed copies elsewhere, so the site is
always built from a fresh run. Each chapter runs with its working directory set to the folder of its
executed copy, the same folder nbval later uses, so relative paths in parameters mean the same thing.

    python -m das_lib.book execute --params smoke --out _build/smoke      # tests
    python -m das_lib.book stage --out _build/stage                        # site
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def chapters(root: Path = ROOT) -> list[Path]:
    """The notebooks of the book, in the order of _toc.yml."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]) for c in part["chapters"]]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def parameters(notebook: Path, kind: str) -> dict:
    """The parameter set `kind` of a chapter: {} for its own defaults, else book/params/<stem>.<kind>.yml."""
    if kind == "default":
        return {}
    path = notebook.parent / "params" / f"{notebook.stem}.{kind}.yml"
    if not path.exists():
        raise FileNotFoundError(f"chapter {notebook.name} has no parameter set {kind!r}: expected {path}")
    return yaml.safe_load(path.read_text()) or {}


def execute(notebook: Path, out_dir: Path, kind: str) -> float:
    """Inject the parameter set (papermill --prepare-only), then execute the copy in `out_dir`; seconds taken."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook.name
    # A saved notebook keeps every progress-bar update as a line of text (no live terminal to redraw
    # it), so the kernel's bars update at most every 30 s; a chapter run by hand keeps live bars.
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    start = time.perf_counter()
    pm.execute_notebook(str(notebook), str(target), parameters=parameters(notebook, kind), prepare_only=True)
    pm.execute_notebook(str(target), str(target), cwd=str(out_dir), progress_bar=False, kernel_name="python3")
    return time.perf_counter() - start


def stage(out: Path, kind: str = "default", root: Path = ROOT) -> None:
    """Lay out a buildable copy of the book in `out` with every chapter executed."""
    if out.exists():
        for item in out.iterdir():  # keep stores under out/book/runs so reruns resume finished work
            if item.name != "book":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    (out / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, out / name)
    for path in (root / "book").iterdir():
        if path.is_file() and path.suffix in {".md", ".bib", ".png", ".svg"}:
            shutil.copy(path, out / "book" / path.name)
    run_all(out / "book", kind, root)


def run_all(out_dir: Path, kind: str, root: Path = ROOT) -> None:
    """Execute every chapter into `out_dir`, printing the time of each."""
    total = 0.0
    for nb in chapters(root):
        print(f"[book] {nb.name} ({kind} parameters) ...", flush=True)
        seconds = execute(nb, out_dir, kind)
        total += seconds
        print(f"[book] {nb.name}: {seconds:.1f} s", flush=True)
    print(f"[book] all chapters: {total:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute every chapter into OUT")
    ex.add_argument("--params", default="smoke", help="parameter set: 'default' or a book/params/<chapter>.<name>.yml name")
    ex.add_argument("--out", type=Path, required=True)
    st = sub.add_parser("stage", help="lay out the executed book in OUT for jupyter-book")
    st.add_argument("--params", default="default")
    st.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "execute":
        run_all(args.out.resolve(), args.params)
    else:
        stage(args.out.resolve(), args.params)


if __name__ == "__main__":
    sys.exit(main())
