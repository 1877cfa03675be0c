"""Command line and run loop of `benchmarks/perf.py`: runs the registered sections of a suite
at one preset, prints each section's markdown as it finishes, writes markdown and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers.utils import logging

from .common import Runtime, load_average
from .registry import PRESETS, SECTIONS, SUITES, get_section, suite_sections

RESULTS = Path(__file__).resolve().parents[1] / "results"
DESCRIPTION = "Performance of hf_afr: scoring cost, memory, mask upkeep, scaling, checkpoints."


def environment(rt: Runtime, preset: str, command: str) -> dict:
    env = {
        "command": command,
        "settings": preset,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(rt.device),
        "dtype": str(rt.dtype).removeprefix("torch."),
        "load_average_start": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if rt.device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(rt.device)
    return env


def _header(preset: str, env: dict) -> str:
    card = f" ({env['card']})" if "card" in env else ""
    return (
        f"# hf_afr performance ({preset} run)\n\n"
        f"`{env['command']}`; {env['date']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}, {env['machine']}, {env['cpus']} CPUs, "
        f"{env['torch_threads']} torch threads, device {env['device']}{card}, dtype "
        f"{env['dtype']}. Load average (1/5/15 min) at start {env['load_average_start']}, "
        f"at end {env['load_average_end']}. Wall time {env['wall_s'] / 60:.1f} min.\n"
    )


def run(
    sections: tuple[str, ...],
    preset: str,
    rt: Runtime,
    command: str = "",
    log=print,
    on_section: Callable[[str, dict], None] | None = None,
) -> tuple[str, dict]:
    """Run `sections` (registry keys) at `preset`; returns (markdown, JSON-ready results).

    Every section's settings are looked up before anything runs; an exception in a section
    stops the run (it is logged with the section's title and re-raised). `on_section` gets
    (markdown, results) of the finished sections after each one.
    """
    plan = [(get_section(key), get_section(key).settings(preset)) for key in sections]
    start = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(rt, preset, command)}
    parts = []
    for section, settings in plan:
        t0, load_start = time.perf_counter(), load_average()
        log(f"[perf] {section.title} ...", file=sys.stderr, flush=True)
        try:
            module = section.load()
            result = module.run(settings, rt)
            text = module.markdown(result)
        except Exception:
            log(f"[perf] {section.title}: FAILED", file=sys.stderr, flush=True)
            raise
        result["settings"] = settings
        result["wall_s"] = time.perf_counter() - t0
        result["load_average"] = [load_start, load_average()]
        results[section.key] = result
        parts.append(
            f"## {section.title}\n\n{text}\n_Section wall time {result['wall_s']:.0f} s; load "
            f"average (1/5/15 min) {load_start} at its start, {result['load_average'][1]} at "
            "its end._\n"
        )
        log(parts[-1], flush=True)
        if on_section is not None:
            on_section(_document(preset, results, start, parts), results)
    return _document(preset, results, start, parts), results


def _document(preset: str, results: dict, start: float, parts: list[str]) -> str:
    env = results["environment"]
    env["load_average_end"] = load_average()
    env["wall_s"] = time.perf_counter() - start
    return _header(preset, env) + "\n" + "\n".join(parts)


def _json_ready(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def write_outputs(markdown: str, results: dict, output: str) -> None:
    """`output` (markdown) and the JSON results beside it (same name, `.json`)."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    path.with_suffix(".json").write_text(
        json.dumps(_json_ready(results), indent=2, sort_keys=True, default=repr) + "\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="Smoke run on small shapes.")
    parser.add_argument("--suite", choices=SUITES, default="cpu")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="Sizes of the run (default: 'quick' with --quick, else 'gpu' for the GPU suite, "
        "else 'full'); 'toy' is the unit tests' sizes.",
    )
    parser.add_argument("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda'.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a machine shared with other jobs, "
        "1 thread avoids the stalls of OpenMP threads waiting for a descheduled sibling.",
    )
    parser.add_argument("--sections", nargs="+", choices=[s.key for s in SECTIONS], default=None)
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file to write (JSON beside it). Default: benchmarks/results/perf.md for "
        "the whole full CPU suite, perf-gpu.md for the whole GPU suite; nothing for 'quick', "
        "'toy' or a choice of --sections (which would otherwise replace the whole report).",
    )
    args = parser.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        parser.error(f"--quick and --preset {args.preset} disagree; give one of them.")
    if args.preset is None:
        args.preset = "quick" if args.quick else "gpu" if args.suite == "gpu" else "full"
    if args.output is None and args.preset in ("full", "gpu") and not args.sections:
        args.output = str(RESULTS / ("perf-gpu.md" if args.suite == "gpu" else "perf.md"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rt = Runtime(torch.device(device), getattr(torch, args.dtype))
    sections = tuple(args.sections) if args.sections else suite_sections(args.suite)
    command = "python benchmarks/perf.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    save = None
    if args.output:  # after every section, so that a run stopped by a timeout keeps them
        save = functools.partial(write_outputs, output=args.output)
    run(sections, args.preset, rt, command.strip(), on_section=save)
    if args.output:
        print(
            f"[perf] wrote {args.output} and {Path(args.output).with_suffix('.json')}",
            file=sys.stderr,
        )
