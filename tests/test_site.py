"""The site's clean-up (das_lib.book.execute.site_copy) and the browser test's checks that need no browser."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from das_lib.book import execute as book, plots  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tests" / "site" / "browser_check.py")
browser_check = importlib.util.module_from_spec(_spec)
sys.modules["browser_check"] = browser_check  # dataclasses look their module up there
_spec.loader.exec_module(browser_check)


def _png(dpi: int = 100) -> str:
    fig, ax = plt.subplots(figsize=(2, 1), dpi=dpi)
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _notebook() -> dict:
    return {"cells": [
        {"cell_type": "markdown", "source": "# NBVAL_CHECK_OUTPUT stays in prose", "metadata": {}},
        {"cell_type": "code", "source": ["# NBVAL_CHECK_OUTPUT\n", "print(1)"], "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stderr", "text": "TqdmWarning: IProgress not found\n 50%|#####  | 5/10\n"},
            {"output_type": "stream", "name": "stdout", "text": "1\n"},
            {"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []}]},
        {"cell_type": "code", "source": "fig", "metadata": {}, "outputs": [
            {"output_type": "display_data", "data": {"image/png": _png()}, "metadata": {}},
            {"output_type": "display_data", "data": {"image/png": _png(50)},
             "metadata": {"scrapbook": {"name": book.HEADLINE[1], "mime_prefix": ""}}}]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_site_copy_drops_stderr_and_markers_only() -> None:
    nb, removed = book.site_copy(_notebook())
    code = nb["cells"][1]
    assert code["source"] == "print(1)"
    assert [o["output_type"] for o in code["outputs"]] == ["stream", "error"]  # stdout and the error stay
    assert removed == ["TqdmWarning: IProgress not found", " 50%|#####  | 5/10"]
    assert nb["cells"][0]["source"].startswith("# NBVAL_CHECK_OUTPUT")  # markdown is not touched


def test_headline_figure_prefers_the_glued_key() -> None:
    nb = _notebook()
    glued = base64.b64decode(nb["cells"][2]["outputs"][1]["data"]["image/png"])
    assert book.headline_figure(nb) == glued
    del nb["cells"][2]["outputs"][1]
    assert book.headline_figure(nb) == base64.b64decode(nb["cells"][2]["outputs"][0]["data"]["image/png"])


def test_text_checks_catch_noise_and_spare_words() -> None:
    noisy = {
        "traceback": "Traceback (most recent call last):",
        "nan": "IIA nan at L1",
        "warning": "UserWarning: something",
        "progress bar": "sweep:  50%|█████     | 4/8 [00:02<00:02,  1.9it/s]",
        "local path": "saved to /work/main/.venv/lib",
        "unresolved glue": "reached {glue:text}`x`",
        "nbval marker": "# NBVAL_CHECK_OUTPUT",
    }
    for what, text in noisy.items():
        assert any(f.startswith(f"visible {what}") for f in browser_check.text_failures(text)), what
    assert browser_check.text_failures("Nancy's finance: 0.85 (nano-scale), a warning sign") == []
    # code may say nan on purpose; a machine path is wrong even there
    code = 'x = float("nan")  # /work/main/.venv/lib'
    assert {f.split(":")[0] for f in browser_check.text_failures(code, without_code="")} == {"visible local path"}


def test_glue_roles_counts_prose_not_code(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("a {glue:text}`k:.2f` b {glue}`j`\n```bash\n{glue:text}`shown`\n```\n")
    assert browser_check.glue_roles(page) == 2


def test_png_dpi_and_plot_fonts_meet_the_check() -> None:
    assert abs(browser_check.png_dpi(base64.b64decode(_png(100))) - 100) < 1
    # the browser test's assumption about the smallest text is the one das_lib.book.plots keeps
    assert browser_check.MIN_FONT_PT == plots.MIN_FONT_PT
    assert plots.WIDTH_IN * plots.DPI <= 800


def test_book_chapters_have_a_headline_source() -> None:
    assert book.HEADLINE[0] in [p.name for p in book.chapters()]
    assert all((ROOT / name).exists() for name in book.SITE_FILES)  # the stage copies every one


def _fake_book(root: Path) -> None:
    (root / "book").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/08_finetuned\n")
    (root / "_config.yml").write_text("title: t\n")
    (root / "references.bib").write_text("")
    (root / "_static").mkdir()
    (root / "_static" / "x.css").write_text("")
    (root / "book" / "intro.md").write_text("# intro\n")
    (root / "book" / "08_finetuned.ipynb").write_text(json.dumps(_notebook()))


def test_stage_from_executed_chapters(tmp_path: Path) -> None:
    root, executed, out = tmp_path / "repo", tmp_path / "smoke", tmp_path / "stage"
    _fake_book(root)
    executed.mkdir()
    (executed / "08_finetuned.ipynb").write_text(json.dumps(_notebook()))
    book.stage(out, root=root, executed=executed)
    for name in ("_config.yml", "_toc.yml", "references.bib", "_static/x.css", "book/intro.md", "book/headline.png"):
        assert (out / name).exists(), name
    staged = json.loads((out / "book" / "08_finetuned.ipynb").read_text())
    assert "NBVAL" not in json.dumps(staged["cells"][1]) and "stderr" not in json.dumps(staged)
    assert "stderr" in (executed / "08_finetuned.ipynb").read_text()  # the copy nbval checks keeps everything


def test_stage_runs_the_chapters_when_not_given_them(tmp_path: Path, monkeypatch) -> None:
    root, out = tmp_path / "repo", tmp_path / "stage"
    _fake_book(root)
    ran = []

    def run_all(out_dir: Path, kind: str, root_: Path, jobs: int) -> None:  # stands in for papermill
        ran.append(kind)
        (out_dir / "08_finetuned.ipynb").write_text(json.dumps(_notebook()))

    monkeypatch.setattr(book, "run_all", run_all)
    book.stage(out, "default", root=root)
    assert ran == ["default"]
    assert "stderr" not in (out / "book" / "08_finetuned.ipynb").read_text()
    assert (out / "book" / "headline.png").exists()


def test_chapters_run_in_parallel_with_their_order_kept() -> None:
    import threading
    import time as clock

    names = ["05_sweep.ipynb", "06_robustness.ipynb", "01_toy.ipynb", "08_finetuned.ipynb"]
    started, finished, lock = [], {}, threading.Lock()

    def job(nb: Path) -> float:
        with lock:
            started.append(nb.name)
        clock.sleep(0.2 if nb.name == "05_sweep.ipynb" else 0.05)
        finished[nb.name] = clock.perf_counter()
        return 1.0

    seconds = book.in_parallel([Path(n) for n in names], job, jobs=2)
    assert set(seconds) == set(names) and started[0] == "08_finetuned.ipynb"  # the longest first
    assert started.index("06_robustness.ipynb") > started.index("05_sweep.ipynb")
    # chapter 6 reads chapter 5's store: it may only have started once chapter 5 was done
    assert finished["06_robustness.ipynb"] - finished["05_sweep.ipynb"] >= 0.05


def test_a_failing_chapter_fails_the_run_after_the_others() -> None:
    ran = []

    def job(nb: Path) -> float:
        ran.append(nb.name)
        if nb.name == "01_toy.ipynb":
            raise RuntimeError("cell 3 failed")
        return 1.0

    try:
        book.in_parallel([Path("01_toy.ipynb"), Path("02_pricetag.ipynb")], job, jobs=2)
    except RuntimeError as err:
        assert "cell 3" in str(err)
    else:
        raise AssertionError("a failing chapter must fail the run")
    assert sorted(ran) == ["01_toy.ipynb", "02_pricetag.ipynb"]


def test_glued_reads_every_key_of_an_executed_chapter(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [
        {"output_type": "display_data", "metadata": {"scrapbook": {"name": "iia", "mime_prefix": ""}},
         "data": {"text/plain": "0.969"}},
        {"output_type": "display_data", "metadata": {"scrapbook": {"name": "fig", "mime_prefix": ""}},
         "data": {"image/png": _png(), "text/plain": "<Figure>"}}]}]}
    (tmp_path / "08_finetuned.ipynb").write_text(json.dumps(nb))
    assert book.glued(tmp_path) == {"08_finetuned": {"iia": "0.969", "fig": "<figure>"}}


def test_chapters_run_side_by_side_get_one_thread_unless_their_parameters_say(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
                     "source": "threads: int = 2  # torch threads\nsteps: int = 5"}],
          "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "params").mkdir()
    chapter = tmp_path / "08_x.ipynb"
    chapter.write_text(json.dumps(nb))
    assert book.parameters(chapter, "default") == {}
    assert book.parameters(chapter, "default", one_thread=True) == {"threads": 1}
    (tmp_path / "params" / "08_x.smoke.yml").write_text("threads: 2\nsteps: 1\n")
    assert book.parameters(chapter, "smoke", one_thread=True) == {"threads": 2, "steps": 1}
    nb["cells"][0]["source"] = "steps: int = 5"
    chapter.write_text(json.dumps(nb))
    assert book.parameters(chapter, "default", one_thread=True) == {}  # no such parameter: nothing injected


def test_kernels_run_side_by_side_get_one_omp_thread(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def job(nb: Path) -> float:
        seen[nb.name] = os.environ.get("OMP_NUM_THREADS")
        return 0.0

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    book.in_parallel([tmp_path / "a.ipynb"], job, jobs=1)
    assert seen == {"a.ipynb": None}
    book.in_parallel([tmp_path / "a.ipynb", tmp_path / "b.ipynb"], job, jobs=2)
    assert seen == {"a.ipynb": "1", "b.ipynb": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # a setting of the user's is kept
    book.in_parallel([tmp_path / "a.ipynb"], job, jobs=2)
    assert seen["a.ipynb"] == "4"
