"""Plumbing of `scripts/finetune.py` and `scripts/prune.py` (internal: not part of the API).

Like the helpers of transformers' example scripts, this code serves the two scripts only and may
change with them: arguments (`arguments`), data (`data`), transforms (`transforms`), pruning and
saving steps (`steps`), and the command-line wrapper (`runner`).
"""
