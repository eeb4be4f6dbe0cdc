"""Reload every alignment a sweep store holds and check that its rotation is still orthogonal.

    python benchmarks/check_alignments.py _build/chapters-7b/alpaca-sweep [--tol 1e-5]
    python benchmarks/check_alignments.py --width 4096     # no store: a fresh rotation moved by one step

Prints, per saved alignment, its class, width d, rank r and max |W W^T - I| (in float64) after the
reload; exits with status 1 if any exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from das_lib.method.interventions import (  # noqa: E402
    BoundlessDASIntervention, RotatedSpaceIntervention, load_intervention, save_intervention)
from das_lib.runs.jobs import ALIGNMENT  # noqa: E402


def moved_rotation(width: int, tol: float, lr: float = 1e-3) -> int:
    """A fresh full rotation of `width`, each free entry moved by `lr` as a first Adam step moves it (the
    backward pass of matrix_exp at d = 4096 takes minutes on a CPU, so the step is applied directly):
    max |W W^T - I| after the step, after training's final re-orthonormalisation, and after save + reload."""
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(width)
    with torch.no_grad():
        for param in intervention.rotation.parameters():
            param.add_(lr * torch.sign(torch.randn_like(param)).tril(-1))
    errors = {"after one step": intervention.rotation.orthogonality_error()}
    intervention.rotation.reorthonormalize()  # what train_intervention does after its last step
    errors["re-orthonormalised"] = intervention.rotation.orthogonality_error()
    with tempfile.TemporaryDirectory() as tmp:
        save_intervention(intervention, Path(tmp) / "alignment")
        loaded, _ = load_intervention(Path(tmp) / "alignment")
    errors["saved and reloaded"] = loaded.rotation.orthogonality_error()
    for name, err in errors.items():
        print(f"d = {width}, {name}: max |W W^T - I| = {err:.2e}")
    worst = errors["saved and reloaded"]
    print(f"reloaded {worst:.2e} (tolerance {tol:g}): {'ok' if worst <= tol else 'NOT ORTHOGONAL'}")
    return 0 if worst <= tol else 1


def main(argv: list[str] | None = None) -> int:
    """Check every alignment under the store; 0 when all are orthogonal to the tolerance."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", nargs="?", help="folder of a sweep store")
    p.add_argument("--width", type=int, help="no store: check a fresh rotation of this width moved by one step")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed max |W W^T - I|")
    args = p.parse_args(argv)
    if args.width:
        return moved_rotation(args.width, args.tol)
    if not args.store:
        p.error("give a store folder or --width")
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
