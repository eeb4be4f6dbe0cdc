"""Executing the book's chapters with papermill, for the site (`make book`) and the tests (`make test`).

Chapters are committed without outputs; this module writes executed copies elsewhere, so the site is
always built from a fresh run. Each chapter runs with its working directory set to the folder of its
executed copy, the same folder nbval later uses, so relative paths in parameters mean the same thing.

    python -m das_lib.book execute --params smoke --out _build/smoke      # tests
    python -m das_lib.book stage --out _build/stage                        # site
    python -m das_lib.book stage --from _build/smoke --out _build/stage-smoke   # site from a smoke run

The site gets a cleaned copy of each executed notebook (`site_copy`): stderr (progress bars, library
warnings) and nbval markers are dropped there only, so a chapter run by hand, and the copies nbval
checks, keep everything.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Files of the repository root that the site needs besides the chapters.
SITE_FILES = ("_config.yml", "_toc.yml", "references.bib")
SITE_DIRS = ("_static", "_ext")
# A comment line that only tells nbval what to compare; a reader has no use for it.
NBVAL_MARKER = re.compile(r"^[ \t]*#[ \t]*NBVAL_[A-Z_]+[ \t]*(\n|$)", re.MULTILINE)
# The landing page's figure: the chapter and glue key it comes from, and the file it is written to.
HEADLINE = ("05_sweep.ipynb", "sweep_heatmap", "headline.png")


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


def site_copy(nb: dict) -> tuple[dict, list[str]]:
    """Clean an executed notebook (nbformat 4 JSON) for the site; returns it and the stderr lines removed.

    stderr carries progress bars (tqdm, transformers' "Loading weights", GGUF) and library warnings, which
    print machine paths; errors are `error` outputs, not stderr, so a failing cell still shows."""
    removed: list[str] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = NBVAL_MARKER.sub("", source)
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = output.get("text", "")
                removed.extend(("".join(text) if isinstance(text, list) else text).splitlines())
            else:
                kept.append(output)
        cell["outputs"] = kept
    return nb, removed


def headline_figure(nb: dict) -> bytes | None:
    """The PNG of the landing page's figure: the output glued as HEADLINE's key, else the chapter's first figure."""
    images = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png is None:
                continue
            # myst_nb.glue stores the key under the output's scrapbook metadata
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == HEADLINE[1]:
                return base64.b64decode("".join(png) if isinstance(png, list) else png)
            images.append(png)
    # Until chapter 5 glues its heatmap as HEADLINE's key, its first figure is the IIA heatmap.
    return base64.b64decode("".join(images[0]) if isinstance(images[0], list) else images[0]) if images else None


def _summarise_removed(name: str, lines: list[str], seen: set[str]) -> None:
    """Print on the terminal what the site copy of a chapter left out: a count, and each warning not
    already printed for an earlier chapter."""
    if not lines:
        return
    warnings = sorted({line.strip() for line in lines if "Warning" in line or "warn" in line.lower()} - seen)
    seen.update(warnings)
    print(f"[book] {name}: {len(lines)} stderr lines kept off the site", flush=True)
    for line in warnings[:10]:
        print(f"[book]   {line[:200]}", flush=True)


def stage(out: Path, kind: str = "default", root: Path = ROOT, executed: Path | None = None) -> None:
    """Lay out a buildable copy of the book in `out` with every chapter executed.

    With `executed` (a folder of already executed chapters, e.g. `make notebooks`' _build/smoke), copy
    those instead of running the chapters again."""
    if out.exists():
        for item in out.iterdir():  # keep stores under out/book/runs so reruns resume finished work
            if item.name != "book":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    (out / "book").mkdir(parents=True, exist_ok=True)
    for name in SITE_FILES:
        if (root / name).exists():
            shutil.copy(root / name, out / name)
    for name in SITE_DIRS:
        if (root / name).is_dir():
            shutil.copytree(root / name, out / name)
    for path in (root / "book").iterdir():
        if path.is_file() and path.suffix in {".md", ".bib", ".png", ".svg"}:
            shutil.copy(path, out / "book" / path.name)
    if executed is None:
        run_all(out / "book", kind, root)
        executed = out / "book"
    seen: set[str] = set()
    for nb_path in chapters(root):
        source = executed / nb_path.name
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: execute the chapters first (python -m das_lib.book execute)")
        nb, removed = site_copy(json.loads(source.read_text()))
        _summarise_removed(nb_path.name, removed, seen)
        (out / "book" / nb_path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        if nb_path.name == HEADLINE[0]:
            png = headline_figure(nb)
            if png is None:
                raise ValueError(f"{nb_path.name} has no figure for the landing page")
            (out / "book" / HEADLINE[2]).write_bytes(png)


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
    st.add_argument("--from", dest="executed", type=Path, default=None,
                    help="folder of already executed chapters to stage instead of running them")
    args = parser.parse_args(argv)
    if args.command == "execute":
        run_all(args.out.resolve(), args.params)
    else:
        stage(args.out.resolve(), args.params, executed=args.executed.resolve() if args.executed else None)


if __name__ == "__main__":
    sys.exit(main())
