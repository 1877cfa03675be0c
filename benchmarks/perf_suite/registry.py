"""The sections of `benchmarks/perf.py`, in the order they run, and the suites they belong to.

A section is a module (imported by name when it runs) with three attributes:

- `PRESETS`: `{preset name: settings}`, the settings being any object (a frozen dataclass in
  the built-in sections) for the presets "full", "quick", "toy" (unit-test sizes) and, for
  GPU-suite sections, "gpu";
- `run(settings, rt: Runtime) -> dict`: measures, returns JSON-ready results, and raises
  when it cannot measure (a missing dependency, a failed worker, a non-finite value): a
  degraded section fails the run, it never reports "not measured";
- `markdown(result: dict) -> str`: the section's tables and notes.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

PRESETS = ("full", "quick", "toy", "gpu")
SUITES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Section:
    """One registry entry.

    Args:
        key: the name used by `--sections` and as the key of the JSON results.
        title: the markdown heading (numbered as in the report).
        module: the importable module implementing the section (`benchmarks/` is on
            `sys.path`, so a module `benchmarks/perf_x.py` beside `perf.py` is "perf_x").
        suites: the suites ("cpu", "gpu") that run it when no `--sections` are given.
    """

    key: str
    title: str
    module: str
    suites: tuple[str, ...] = ("cpu",)

    def load(self) -> ModuleType:
        module = importlib.import_module(self.module)
        missing = [name for name in ("PRESETS", "run", "markdown") if not hasattr(module, name)]
        if missing:
            raise TypeError(
                f"Section {self.key!r}: module {self.module!r} lacks {missing}; a section module "
                "defines PRESETS, run(settings, rt) and markdown(result)."
            )
        return module

    def settings(self, preset: str) -> Any:
        presets = self.load().PRESETS
        if preset not in presets:
            raise ValueError(
                f"Section {self.key!r} has no {preset!r} preset (it has {sorted(presets)}); "
                f"choose other sections or another preset."
            )
        return presets[preset]


SECTIONS: tuple[Section, ...] = (
    Section("timing", "1. Scoring time, side by side", "perf_suite.timing"),
    Section(
        "gpu_scoring",
        "1. Scoring throughput and peak memory (GPU)",
        "perf_suite.gpu",
        suites=("gpu",),
    ),
    Section("profile", "2. Where the scoring time goes", "perf_suite.profile", ("cpu", "gpu")),
    Section("memory", "3. Peak memory: scoring vs one training step", "perf_suite.memory"),
    Section("upkeep", "4. Mask upkeep during fine-tuning", "perf_suite.upkeep", ("cpu", "gpu")),
    Section("scaling", "5. Scaling of the scoring time", "perf_suite.scaling"),
    Section("checkpoints", "6. Checkpoints: dense vs compact", "perf_suite.checkpoints"),
    Section("families", "7. Scoring time across model families", "perf_suite.families"),
    Section("criteria", "8. Cost of every criterion against SNIP", "perf_suite.criteria"),
)


def get_section(key: str) -> Section:
    for section in SECTIONS:
        if section.key == key:
            return section
    known = ", ".join(s.key for s in SECTIONS)
    raise ValueError(f"Unknown section {key!r}; known sections: {known}.")


def suite_sections(suite: str) -> tuple[str, ...]:
    """Keys of the sections a suite runs, in registry order."""
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; choose one of {SUITES}.")
    return tuple(s.key for s in SECTIONS if suite in s.suites)
