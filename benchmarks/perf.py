"""Performance of hf_afr in one run: scoring cost, memory, mask upkeep, scaling, checkpoints,
criteria.

Sections (each prints one markdown table; the code is in `benchmarks/perf_suite/`, one module
per section, see its package docstring for the design and for adding a section):

1. Scoring time: ReFer/SNIP and AFR/SNIP on the same batches (targets 1.10 and 1.70; the
   stretch goal is AFR/SNIP < 1.5), plus AFR through one batched backward
   (`is_grads_batched`) and SNIP + ReFer run separately, for comparison.
2. Where the time goes: a `torch.profiler` breakdown of each criterion into forward,
   objectives (loss, SVD), each backward pass, SVD backward, gradient accumulation and
   the rest, and the floor (F + 2B) / (F + B) that it implies for AFR/SNIP.
3. Peak memory of scoring against one plain training step (forward, backward, AdamW step)
   at the same batch size, each in a fresh process, with micro-batching and gradient
   checkpointing (target AFR <= 1.3x).
4. Mask upkeep: a `Trainer` step with `PruningMaskCallback` against one without (target
   <= 3% slower), and the direct cost of the added work.
5. Scaling: scoring time against the number of scoring samples and the parameter count,
   with least-squares line fits.
6. Checkpoints: `benchmarks/checkpoint_size.py` (dense vs compact sizes, information bound,
   save/load times), called rather than duplicated.
7. Criteria: every data-driven criterion (SNIP, ReFer, AFR, GraSP, Fisher, SynFlow with its
   default rounds and with fewer) timed against SNIP on the same batches.

A section that cannot measure fails the run (non-zero exit).

    python benchmarks/perf.py            # full CPU run, writes benchmarks/results/perf.{md,json}
    python benchmarks/perf.py --quick    # smoke run of every section on small shapes
    python benchmarks/perf.py --quick --sections profile memory
    python benchmarks/perf.py --suite gpu --device cuda --output benchmarks/results/perf-gpu.md
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this repository's hf_afr; perf_suite

from perf_suite.driver import main  # noqa: E402

if __name__ == "__main__":
    main()
