"""The sections of `benchmarks/perf.py`, one module each, and the driver that runs them.

Machines running this are often shared and noisy, so every comparison is measured side by
side in the same run: the variants of one table are run in interleaved rounds (the order
rotates every round) and the ratios are medians of the per-round ratios. Absolute times are
only there to read the ratios.

Layout:

- `common.py`: runtime (device, dtype), model shapes and random-weight models, batches, the
  public-API scorer, interleaved rounds, ratios, verdicts and targets;
- `registry.py`: `SECTIONS`, the ordered registry, and which suite runs which section;
- `driver.py`: the command line, the run loop, markdown and JSON output;
- one module per section: `timing.py` (1. scoring time), `gpu.py` (1. on a GPU: throughput
  and peak memory per dtype), `profile.py` (2. where the time goes), `memory.py` (3. peak
  memory, each row in a fresh process), `upkeep.py` (4. mask upkeep while fine-tuning),
  `scaling.py` (5. scaling with samples and parameters), `checkpoints.py` (6. dense vs
  compact checkpoints, from `benchmarks/checkpoint_size.py`), `criteria.py` (7. every
  criterion's cost against SNIP).

The sections reach hf_afr through its public API (`get_criterion(...).score`, `PrunerConfig`,
`find_prunable_parameters`, `apply_masks`, `MaskEnforcer`, `PruningMaskCallback`,
`hf_afr.criteria.sum_of_z_scores`, the side-by-side timing of `hf_afr.inference.timing`) and
the `torch.profiler` labels a profile of a scoring call shows (`hf_afr::forward`,
`hf_afr::backward[loss]`, ...).

Adding a section (e.g. `perf_suite/families.py`):

1. Write a module with `PRESETS` (`{"full": ..., "quick": ..., "toy": ...}`, plus `"gpu"`
   for a GPU-suite section; a frozen dataclass of sizes per preset), `run(settings, rt)`
   returning JSON-ready results and raising when it cannot measure, and
   `markdown(result)` returning its tables. Helpers come from `perf_suite.common`.
2. Add one `Section(key, title, module)` entry to `SECTIONS` in `registry.py`, e.g.
   `Section("families", "7. Scoring time across model families", "perf_suite.families")` (a
   module beside `perf.py` is importable by its name too); `suites=("cpu", "gpu")` to run it in both.
3. Add its toy-size test to `tests/test_perf_benchmark.py` (assert the content of its
   result and table, not only that it ran).

Usage (the launcher is `benchmarks/perf.py`):

    python benchmarks/perf.py            # full CPU run, writes benchmarks/results/perf.{md,json}
    python benchmarks/perf.py --quick    # smoke run of every section on small shapes
    python benchmarks/perf.py --quick --sections profile memory
    python benchmarks/perf.py --suite gpu --device cuda --output benchmarks/results/perf-gpu.md
"""
