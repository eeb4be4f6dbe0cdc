"""Experiments built from the method and the task: stores, sweeps, robustness, scaling, alignment studies."""
