"""Executing the book's chapters with papermill, for the site (`make book`) and the tests (`make test`).

Chapters are committed without outputs; this module writes executed copies elsewhere, so the site is
always built from a fresh run. Each chapter runs with its working directory set to the folder of its
executed copy, the same folder nbval later uses, so relative paths in parameters mean the same thing.

    python -m das_lib.book execute --params smoke --out _build/smoke      # tests
    python -m das_lib.book stage --out _build/stage                        # site
    python -m das_lib.book stage --from _build/smoke --out _build/stage-smoke   # site from a smoke run
    python -m das_lib.book check --from _build/smoke                       # nbval reruns them
    python -m das_lib.book glued _build/smoke                              # every glued value, as JSON

Chapters run two at a time by default (`--jobs`), each on one torch thread (OMP_NUM_THREADS=1, and a
chapter with a `threads` parameter gets 1 unless its parameter set says otherwise), so two kernels use
two cores without waiting on each other. A chapter that reads another's results (AFTER) waits for it.

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
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Files of the repository root that the site needs besides the chapters.
SITE_FILES = ("_config.yml", "_toc.yml", "references.bib")
SITE_DIRS = ("_static", "_ext")
# A comment line that only tells nbval what to compare; a reader has no use for it.
NBVAL_MARKER = re.compile(r"^[ \t]*#[ \t]*NBVAL_[A-Z_]+[ \t]*(\n|$)", re.MULTILINE)
# The landing page's figure: the chapter and glue key it comes from, and the file it is written to.
HEADLINE = ("08_finetuned.ipynb", "ft_finding_figure", "headline.png")
# Chapter 6's default parameters read chapter 5's store, so it starts only once chapter 5 has finished.
AFTER = {"06_robustness.ipynb": "05_sweep.ipynb"}
# The longest chapter starts first, so the other kernel works through the short ones meanwhile.
RUN_FIRST = ("08_finetuned.ipynb", "09_programs.ipynb")


def chapters(root: Path = ROOT, only: Sequence[str] | None = None) -> list[Path]:
    """The notebooks of the book, in the order of _toc.yml; with `only`, just those (file stems)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]) for c in part["chapters"]]
    notebooks = [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]
    if only is None:
        return notebooks
    unknown = sorted(set(only) - {nb.stem for nb in notebooks})
    if unknown:
        raise ValueError(f"no chapter {unknown}: choose from {[nb.stem for nb in notebooks]}")
    return [nb for nb in notebooks if nb.stem in only]


def parameters(notebook: Path, kind: str, one_thread: bool = False) -> dict:
    """The parameter set `kind` of a chapter: {} for its own defaults, else book/params/<stem>.<kind>.yml;
    with `one_thread`, also `threads: 1` where the chapter has that parameter and the set does not give it."""
    import papermill as pm

    params = {}
    if kind != "default":
        path = notebook.parent / "params" / f"{notebook.stem}.{kind}.yml"
        if not path.exists():
            raise FileNotFoundError(f"chapter {notebook.name} has no parameter set {kind!r}: expected {path}")
        params = yaml.safe_load(path.read_text()) or {}
    if one_thread and "threads" not in params and "threads" in pm.inspect_notebook(str(notebook)):
        params["threads"] = 1
    return params


def execute(notebook: Path, out_dir: Path, kind: str, one_thread: bool = False) -> float:
    """Inject the parameter set (papermill --prepare-only), then execute the copy in `out_dir`; seconds taken.

    With `one_thread` (chapters run side by side) a chapter's `threads` parameter is set to 1 unless the
    parameter set gives it: two kernels of two threads each on two cores wait on each other's threads
    at every operation (chapter 8's steps ran about three times slower than on one thread)."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook.name
    params = parameters(notebook, kind, one_thread)
    # A saved notebook keeps every progress-bar update as a line of text (no live terminal to redraw
    # it), so the kernel's bars update at most every 30 s; a chapter run by hand keeps live bars.
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    start = time.perf_counter()
    pm.execute_notebook(str(notebook), str(target), parameters=params, prepare_only=True)
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


def _glued_data(output: dict) -> dict:
    """An output's data by plain mime type: myst_nb's glue(..., display=False) prefixes every type."""
    prefix = output.get("metadata", {}).get("scrapbook", {}).get("mime_prefix", "")
    return {mime[len(prefix):] if mime.startswith(prefix) else mime: value for mime, value in output.get("data", {}).items()}


def headline_figure(nb: dict) -> bytes | None:
    """The PNG of the landing page's figure: the output glued as HEADLINE's key, else the chapter's first figure."""
    images = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            png = _glued_data(output).get("image/png")
            if png is None:
                continue
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == HEADLINE[1]:
                return base64.b64decode("".join(png) if isinstance(png, list) else png)
            images.append(png)
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


def stage(out: Path, kind: str = "default", root: Path = ROOT, executed: Path | None = None, jobs: int = 2) -> None:
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
        run_all(out / "book", kind, root, jobs)
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


def in_parallel(notebooks: list[Path], job: Callable[[Path], float], jobs: int) -> dict[str, float]:
    """Run `job` on every notebook, `jobs` at a time, RUN_FIRST first and each AFTER once its chapter is
    done; returns the seconds of each. The first failure is raised once the others have finished.

    With more than one at a time, every kernel started meanwhile gets OMP_NUM_THREADS=1 (unless it is
    set already): torch would give each kernel a thread per core, and two kernels of two threads on two
    cores wait on each other's threads at every operation (chapter 6 took 1167 s so, 185 s on one thread)."""
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    order = sorted(notebooks, key=lambda nb: nb.name not in RUN_FIRST)
    done = {nb.name: threading.Event() for nb in order}
    seconds: dict[str, float] = {}

    def run(nb: Path) -> float:
        try:
            before = AFTER.get(nb.name)
            if before in done:
                done[before].wait()
            seconds[nb.name] = job(nb)
            return seconds[nb.name]
        finally:
            done[nb.name].set()

    # The sort is stable, so a chapter of AFTER is submitted after the one it waits for: no deadlock.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures: list[Future] = [pool.submit(run, nb) for nb in order]
    for future in futures:
        future.result()
    return seconds


def run_all(out_dir: Path, kind: str, root: Path = ROOT, jobs: int = 2, only: Sequence[str] | None = None) -> None:
    """Execute every chapter into `out_dir`, `jobs` at a time, printing the time of each."""
    def job(nb: Path) -> float:
        print(f"[book] {nb.name} ({kind} parameters) ...", flush=True)
        seconds = execute(nb, out_dir, kind, one_thread=jobs > 1)
        print(f"[book] {nb.name}: {seconds:.1f} s", flush=True)
        return seconds

    start = time.perf_counter()
    seconds = in_parallel(chapters(root, only), job, jobs)
    print(f"[book] all chapters: {time.perf_counter() - start:.1f} s wall, {sum(seconds.values()):.1f} s of "
          f"chapter time ({jobs} at a time)", flush=True)


def check(executed: Path, root: Path = ROOT, jobs: int = 2, only: Sequence[str] | None = None) -> int:
    """Rerun every executed chapter in `executed` under nbval (`pytest --nbval-lax`), `jobs` at a time;
    prints each chapter's result and time, returns the number of chapters that failed."""
    failed: list[str] = []

    def job(nb: Path) -> float:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                              "--nbval-sanitize-with", str(root / "book" / "nbval_sanitize.cfg"), str(executed / nb.name)],
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
        summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"[nbval] {nb.name}: {summary} ({seconds:.1f} s)", flush=True)
        if run.returncode != 0:
            failed.append(nb.name)
            print(run.stdout[-6000:] + run.stderr[-2000:], flush=True)
        return seconds

    start = time.perf_counter()
    in_parallel([nb for nb in chapters(root, only) if (executed / nb.name).exists()], job, jobs)
    print(f"[nbval] {len(failed)} chapter(s) failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{time.perf_counter() - start:.1f} s wall", flush=True)
    return len(failed)


def glued(executed: Path) -> dict[str, dict[str, str]]:
    """Every value the executed chapters in `executed` glued, as text: {chapter: {key: value}}; figures
    and tables are given by their kind, so two runs can be compared key by key."""
    values: dict[str, dict[str, str]] = {}
    for path in sorted(executed.glob("*.ipynb")):
        chapter = values.setdefault(path.stem, {})
        for cell in json.loads(path.read_text()).get("cells", []):
            for output in cell.get("outputs", []):
                name = output.get("metadata", {}).get("scrapbook", {}).get("name")
                if name is None:
                    continue
                data = _glued_data(output)
                text = data.get("text/plain", "")
                chapter[name] = "<figure>" if "image/png" in data else "".join(text) if isinstance(text, list) else text
    return values


def main(argv: list[str] | None = None) -> int:
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
    ck = sub.add_parser("check", help="rerun executed chapters under nbval")
    ck.add_argument("--from", dest="executed", type=Path, required=True)
    gl = sub.add_parser("glued", help="print every glued value of the executed chapters in a folder, as JSON")
    gl.add_argument("executed", type=Path)
    for p in (ex, st, ck):
        p.add_argument("--jobs", type=int, default=int(os.environ.get("BOOK_JOBS", "2")),
                       help="chapters run at a time (default 2, or $BOOK_JOBS)")
    for p in (ex, ck):
        p.add_argument("--only", nargs="+", default=None, help="only these chapters (file stems, e.g. 04_boundless)")
    args = parser.parse_args(argv)
    if getattr(args, "only", None):
        try:
            chapters(ROOT, args.only)
        except ValueError as err:
            parser.error(str(err))
    if args.command == "glued":
        print(json.dumps(glued(args.executed), indent=1))
        return 0
    if args.command == "execute":
        run_all(args.out.resolve(), args.params, ROOT, args.jobs, args.only)
    elif args.command == "check":
        return 1 if check(args.executed.resolve(), ROOT, args.jobs, args.only) else 0
    else:
        stage(args.out.resolve(), args.params, ROOT, args.executed.resolve() if args.executed else None, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
