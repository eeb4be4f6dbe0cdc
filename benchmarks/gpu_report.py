"""The GPU check's one JSON and its tables: `python benchmarks/gpu_report.py OUT` (gpu_check.sh runs it).

Reads what the parts of benchmarks/gpu_check.sh left in OUT (parts.tsv, bench_7b.json, pyvene_7b.json,
rotation.json, cuda_suite.xml), writes OUT/gpu_check.json, and prints markdown tables for
benchmarks/README.md. A part that failed or timed out is reported as such, with whatever rows it wrote.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _rows(out: Path, name: str) -> list[dict] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else None


def suite_results(path: Path) -> dict | None:
    """Counts and per-test outcomes of a pytest junit XML file."""
    if not path.exists():
        return None
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = (tag if tag != "error" else "failed", (found.get("message") or "")[:300])
                break
        tests[f"{case.get('classname')}::{case.get('name')}"] = outcome
    counts = {}
    for outcome in tests.values():
        key = outcome if isinstance(outcome, str) else outcome[0]
        counts[key] = counts.get(key, 0) + 1
    return {"counts": counts, "tests": tests}


def collect(out: Path) -> dict:
    """Everything the check measured, in one dictionary."""
    parts = {}
    tsv = out / "parts.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, status, seconds = line.split("\t")
        parts[name] = {"exit": int(status), "seconds": int(seconds)}
    return {"parts": parts, "bench_7b": _rows(out, "bench_7b"), "pyvene_7b": _rows(out, "pyvene_7b"),
            "rotation": _rows(out, "rotation"), "cuda_suite": suite_results(out / "cuda_suite.xml")}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `columns` of `rows`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(result: dict) -> str:
    """The tables, in markdown."""
    parts = [f"{name}: exit {p['exit']}, {p['seconds']} s" for name, p in result["parts"].items()]
    text = ["## Parts", "", *[f"- {p}" for p in parts], ""]
    bench = result["bench_7b"]
    if bench:
        text += ["## bench_7b.py (steps/s)", "", table(bench, ["layer", "position", "rotation", "map", "fast_steps_per_s",
                 "plain_steps_per_s", "floor_steps_per_s", "fast_time_vs_floor", "fast_peak_gib", "check_error",
                 "check_model_noise", "max_logit_diff"]), ""]
    pyvene = result["pyvene_7b"]
    if pyvene:
        columns = ["layer", "rotation", "pyvene_steps_per_s"] + sorted({k for r in pyvene for k in r if k.startswith("das_lib_")})
        text += ["## das_lib against pyvene 0.1.8 (steps/s)", "", table(pyvene, columns), ""]
    rotation = result["rotation"]
    if rotation:
        text += ["## The rotation alone (seconds per step)", "", table(rotation, list(rotation[0])), ""]
    suite = result["cuda_suite"]
    if suite:
        text += ["## GPU suite", "", f"counts: {suite['counts']}", ""]
        text += [f"- {name}: {outcome if isinstance(outcome, str) else outcome[0] + ': ' + outcome[1]}"
                 for name, outcome in suite["tests"].items()]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> dict:
    """Collect OUT's results into OUT/gpu_check.json and print the tables."""
    out = Path((argv or sys.argv[1:])[0])
    result = collect(out)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
