"""Multiple-choice colour questions after MIB's MCQA task: game.py (items, causal models, pairs, text) and
task.py (prompts, token roles, tensors: the das_lib.method.task.Task of it), registered as "mcqa"."""
