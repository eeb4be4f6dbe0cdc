"""The illusion check (das_lib.method.illusion) run on a grid's chosen alignments.

For each hypothesis of a finding, the alignment that stands for it (`reuse.chosen_cell`: at its chosen site, the
run of best validation score on the grid's pool), each of its variables' learned subspace U is split into the part the layers above read and the inputs move
and the rest, each part patched alone on the grid's test pairs (every pair, the variable's own labels). The site's
natural spread and read space come from the pool's training pairs at that position. `check` returns one row per
variable with each part's gain over doing nothing and its interval, and the reading's verdict; on a planted model
(`references`: its planted subspace per variable) U's part inside and outside the planted subspace too.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from das_lib.method.illusion import FixedSubspace, diagnose, learned_subspace, reading, site_spaces, test_run
from das_lib.runs.findings import Finding
from das_lib.runs.grid import Grid
from das_lib.runs.jobs import candidate_data, data_key
from das_lib.runs.reuse import chosen_cell

POOL = 256  # training pairs whose states give the site's natural spread and read space


def check(grid: Grid, finding: Finding, candidates: Sequence[str] | None = None,
          references: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """One row per variable of each of `candidates` (default: the finding's) at its chosen site: U's size, its gain
    over doing nothing and that of each part (read and active; connected, disconnected; active, dormant; inside
    and outside a reference) with 95% intervals, the dose of U's top variance direction, and the verdict. Kept as a
    record in the grid's store (keyed by the alignments' cells and the references) and read back from there, as
    `attrs["stored"]` says."""
    keys = list(candidates or finding.sites)
    cells = [grid.record(chosen_cell(grid, finding, k))["hash"] for k in keys]
    refs = {name: hashlib.sha256(r.detach().cpu().double().numpy().tobytes()).hexdigest() for name, r in (references or {}).items()}
    config = grid.study_config("illusion_check", alignments=cells, references=refs, pool=POOL)
    frame, stored = grid.study(config, lambda: _measure(grid, finding, keys, references), _as_results, _from_results)
    frame.attrs["stored"] = stored
    return frame


def _as_results(frame: pd.DataFrame) -> dict:
    """The table as a record's results (plain JSON: columns, rows, dtypes)."""
    flat = frame.reset_index()
    return {"columns": list(flat.columns), "data": flat.to_dict("split")["data"], "types": flat.dtypes.astype(str).to_dict()}


def _from_results(r: Mapping) -> pd.DataFrame:
    """The table a record's results hold."""
    return pd.DataFrame(r["data"], columns=r["columns"]).astype(r["types"]).set_index(["candidate", "variable"])


def _measure(grid: Grid, finding: Finding, keys: Sequence[str], references: Mapping[str, torch.Tensor] | None) -> pd.DataFrame:
    rows, at_site = [], {}
    for key in keys:
        site = finding.sites[key]
        intervention, record = grid.load_alignment(chosen_cell(grid, finding, key))
        runner, config = grid.runner, record["config"]
        if (site, data_key(config)) not in at_site:  # candidates at one site on one pool share its measurements
            pool = runner.pool(config)
            j = pool.roles.index(site.position)
            train = pool.encoded["train"].column(j)
            spread, pairs = train.select(np.arange(min(POOL, len(train)))), pool.encoded["test"].column(j)
            # the pool's layer cache at the site (the grid's own, still held after its run): states without a forward pass
            nothing = FixedSubspace(torch.zeros(runner.model.config.hidden_size, 0, device=runner.device))
            forward, _ = runner.forward_for(config, nothing, [spread, pairs])
            at_site[site, data_key(config)] = (site_spaces(runner.model, site, spread, forward=forward), pairs,
                                               test_run(runner.model, site, pairs, forward=forward))
        spaces, pairs, run = at_site[site, data_key(config)]
        labels = runner.targets(config, "test")[0]
        test = candidate_data(pairs, labels)
        n = labels.shape[1]
        for v, variable in enumerate(grid.candidate(key).variables):
            basis = learned_subspace(intervention.to(runner.device), v)
            refs = {name: ref for name, ref in (references or {}).items() if name == variable}
            found = diagnose(runner.model, site, basis, test.select(np.arange(v * n, (v + 1) * n)), spaces, refs, run=run)
            verdict = reading(found)
            row = {"candidate": key, "variable": variable, "site": f"L{site.layer} {site.position}", "U dims": basis.shape[1],
                   "verdict": verdict["verdict"], "dose 1 gain": float(found.dose.iloc[0]["gain"])}
            for _, part in found.table.iterrows():
                if part["part"] != "none":
                    row |= {f"{part['part']} dims": int(part["dims"]), f"{part['part']} gain": part["gain"],
                            f"{part['part']} gain low": part["gain_low"], f"{part['part']} gain high": part["gain_high"],
                            f"{part['part']} off-manifold": part["off_manifold"]}
            rows.append(row)
    return pd.DataFrame(rows).set_index(["candidate", "variable"])
