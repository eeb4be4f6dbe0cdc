"""Reload every alignment a sweep store holds and check that its rotation is still orthogonal.

    python benchmarks/check_alignments.py _build/chapters-7b/alpaca-sweep [--tol 1e-5]

Prints, per saved alignment, its class, width d, rank r and max |W W^T - I| (in float64) after the
reload; exits with status 1 if any exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.method.interventions import RotatedSpaceIntervention, load_intervention  # noqa: E402
from das_lib.runs.sweep import ALIGNMENT  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Check every alignment under the store; 0 when all are orthogonal to the tolerance."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="folder of a sweep store")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed max |W W^T - I|")
    args = p.parse_args(argv)
    files = sorted(Path(args.store).glob(f"*/{ALIGNMENT}.safetensors"))
    if not files:
        raise SystemExit(f"no saved alignment ({ALIGNMENT}.safetensors) under {args.store}")
    worst = 0.0
    for path in files:
        start = time.perf_counter()
        module, _ = load_intervention(path.with_suffix(""))
        if not isinstance(module, RotatedSpaceIntervention):
            continue
        err = module.rotation.orthogonality_error()
        worst = max(worst, err)
        print(f"{path.parent.name}: {type(module).__name__} d = {module.d}, r = {module.r}: "
              f"max |W W^T - I| = {err:.2e} ({time.perf_counter() - start:.0f} s)")
    print(f"worst {worst:.2e} (tolerance {args.tol:g}): {'ok' if worst <= args.tol else 'NOT ORTHOGONAL'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
