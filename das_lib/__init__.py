"""das_lib: causal models, interchange interventions, DAS and Boundless DAS for Hugging Face LMs.

The public API, flat (`import das_lib as dl; dl.load_model(...)`): each name below is imported from its module on
first use, so `import das_lib` stays light and the layers underneath keep importing one way.

    import das_lib as dl
    model, tokenizer = dl.load_model("standin")
    task = dl.make_task("pricetag", tokenizer, {"template": "standin"})
    train = task.interchange_data(dl.labelled_pairs(task, "left", 1024, seed=0), "last")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {  # name -> module it lives in
    # models and tasks
    "load_model": "das_lib.models.load", "load_tokenizer": "das_lib.models.load", "load_config": "das_lib.models.load",
    "make_task": "das_lib.tasks", "TASKS": "das_lib.tasks", "Task": "das_lib.method.task",
    "labelled_pairs": "das_lib.method.task",
    # causal models
    "CausalModel": "das_lib.method.causal", "Variable": "das_lib.method.causal",
    "CounterfactualPair": "das_lib.method.counterfactual", "make_pair": "das_lib.method.counterfactual",
    # sites, interventions, training
    "Site": "das_lib.method.sites", "InterchangeData": "das_lib.method.data",
    "BoundlessDASIntervention": "das_lib.method.interventions", "DASIntervention": "das_lib.method.interventions",
    "NeuronIntervention": "das_lib.method.interventions",
    "TrainConfig": "das_lib.method.training", "train_intervention": "das_lib.method.training",
    "evaluate": "das_lib.method.training", "make_forward": "das_lib.method.fastpath",
    # grids, findings and their checks
    "Grid": "das_lib.runs.grid", "GridSpec": "das_lib.runs.grid", "Cell": "das_lib.runs.grid",
    "sweep_spec": "das_lib.runs.sweep", "finding": "das_lib.runs.findings",
    "ProgramSearch": "das_lib.runs.program_search", "SearchSpec": "das_lib.runs.program_search",
    "control_passes": "das_lib.runs.controls", "calibrate": "das_lib.runs.calibration",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # found once: the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'das_lib' has no attribute {name!r}; its public names are {__all__}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
