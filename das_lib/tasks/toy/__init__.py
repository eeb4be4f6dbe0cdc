"""Chapter 1's toy task: (a + b) * c from three digits (task.py); its network is das_lib.models.toy.

It is not in the registry of tasks by name (das_lib.tasks.TASKS): a registered task has prompts for a tokenizer,
and this one's network reads the digits as numbers.
"""
