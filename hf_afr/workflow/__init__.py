"""The prune -> fine-tune -> save workflow of `scripts/prune.py` and `scripts/finetune.py`.

Public building blocks for scripts of your own, in the spirit of transformers' example
scripts: argument dataclasses (`arguments`), dataset loading and splits (`data`), image
transforms and the collator (`transforms`), the pruning, training and saving steps (`steps`),
resuming a run (`resuming`), metrics and results (`results`),
the output folder (`outputs`), and the one-line-error command-line wrapper (`runner`).
"""
