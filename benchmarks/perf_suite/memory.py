"""Section 3: peak memory of scoring against one plain training step, each in a fresh process.

CPU: the peak of the bytes held by tensors, from the profiler's allocation events (weights,
batch and anything allocated before counted once, as `torch.cuda.max_memory_allocated` does
on a GPU), and the growth of the process's peak RSS; CUDA: `torch.cuda.max_memory_allocated`.
The *afr gradients* modes are the AFR call cut at the end of its last labelled backward
(`hf_afr::backward[...]`): the peak of the gradient engine alone, from the same allocation
events.

Run alone, this module is the worker of one row: `python -m perf_suite.memory '<spec JSON>'`
prints the row as JSON (the section starts it with the repository and `benchmarks/` on
PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

from .common import (
    METHODS,
    TARGETS,
    Runtime,
    build_model,
    describe_shape,
    make_batches,
    scorer,
    verdict,
)

ALL_MODES = (
    "train step",
    "snip",
    "refer",
    "afr",
    "afr, micro-batch",
    "afr, checkpointing",
    "afr, micro-batch + checkpointing",
    "afr gradients",
    "afr gradients, micro-batch + checkpointing",
)
BENCHMARKS = Path(__file__).resolve().parents[1]
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    shape: str
    batch_sizes: tuple[int, ...]
    modes: tuple[str, ...]
    fresh_process: bool = True


PRESETS = {
    "full": MemorySettings("ViT-B/16", (2, 4, 8), ALL_MODES),
    "quick": MemorySettings(
        "ViT-S/16-6L",
        (4,),
        ("train step", "afr", "afr, micro-batch + checkpointing", "afr gradients"),
    ),
    "toy": MemorySettings("toy", (4,), ALL_MODES, fresh_process=False),
}


class Mode(NamedTuple):
    method: str  # a criterion name, or "train step"
    micro_batch: bool = False  # `micro_batch_size` = batch / 4
    checkpointing: bool = False  # `gradient_checkpointing=True`
    engine_only: bool = False  # cut at the end of the last backward


def parse_mode(mode: str) -> Mode:
    """The parts of a mode name such as "afr gradients, micro-batch + checkpointing"."""
    if mode == "train step":
        return Mode(mode)
    head, _, options = mode.partition(",")
    words = head.split()
    if words[0] not in METHODS or words[1:] not in ([], ["gradients"]):
        raise ValueError(f"Unknown memory mode {mode!r}; known modes: {', '.join(ALL_MODES)}.")
    return Mode(words[0], "micro-batch" in options, "checkpointing" in options, bool(words[1:]))


def mode_fn(mode: str, model, batch: dict) -> Callable[[], Any]:
    """The call measured for `mode`: a training step, or a criterion end to end."""
    parsed = parse_mode(mode)
    if parsed.method == "train step":

        def step():
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()

        return step
    kwargs = {}
    if parsed.micro_batch:
        kwargs["micro_batch_size"] = max(1, batch["pixel_values"].shape[0] // 4)
    if parsed.checkpointing:
        kwargs["gradient_checkpointing"] = True
    return scorer(model, [batch], parsed.method, **kwargs)


def resident_bytes(model, batch: dict) -> int:
    tensors = list(model.parameters()) + list(model.buffers()) + list(batch.values())
    return sum(t.numel() * t.element_size() for t in tensors)


def _trace_events(prof) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)["traceEvents"]


def _engine_end(events: list[dict]) -> float:
    """Trace time at which the last `hf_afr::backward[...]` range ends."""
    ends = [
        e["ts"] + e["dur"]
        for e in events
        if e.get("ph") == "X" and str(e.get("name", "")).startswith("hf_afr::backward[")
    ]
    if not ends:
        raise RuntimeError(
            "No `hf_afr::backward[...]` range in the profile: the library's profiler labels "
            "changed; update `_engine_end` in benchmarks/perf_suite/memory.py."
        )
    return max(ends)


def trace_peak_growth(events: list[dict], device_type: int, engine_only: bool) -> int:
    """Peak bytes allocated (over what was allocated at the start) on one device type
    (0: CPU, 1: CUDA), up to the end of the gradient engine if `engine_only`."""
    memory = sorted(
        (
            e
            for e in events
            if e.get("name") == "[memory]" and e["args"].get("Device Type") == device_type
        ),
        key=lambda e: e["ts"],
    )
    if not memory:
        raise RuntimeError("The profiler recorded no allocation: cannot measure the peak.")
    until = _engine_end(events) if engine_only else float("inf")
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory if e["ts"] <= until) - start


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def profiled_peak(fn: Callable[[], Any], engine_only: bool = False) -> tuple[int, int | None]:
    """(peak bytes allocated by tensors during `fn`, peak RSS growth during `fn`) on CPU."""
    can_reset = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS") * 1024
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        peak_rss = _proc_status_kib("VmHWM") * 1024 if can_reset else None
    growth = trace_peak_growth(_trace_events(prof), 0, engine_only)
    rss_growth = None if peak_rss is None or engine_only else peak_rss - rss_before
    return growth, rss_growth


def _cuda_peak(fn: Callable[[], Any], engine_only: bool) -> tuple[int, int]:
    """(bytes allocated before `fn`, peak bytes allocated during it) on the current GPU."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    if not engine_only:
        fn()
        torch.cuda.synchronize()
        return before, torch.cuda.max_memory_allocated()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
        torch.cuda.synchronize()
    return before, before + trace_peak_growth(_trace_events(prof), 1, engine_only=True)


def worker(spec: dict) -> dict:
    """Peak memory of one mode on a fresh model (run in its own process by `measure_row`)."""
    rt = Runtime(torch.device(spec["device"]), getattr(torch, spec["dtype"]))
    engine_only = parse_mode(spec["mode"]).engine_only
    model = build_model(spec["shape"], rt)
    batch = make_batches(model, 1, spec["batch_size"], rt)[0]
    fn = mode_fn(spec["mode"], model, batch)
    if rt.device.type == "cuda":
        before, peak = _cuda_peak(fn, engine_only)
        return {"total": peak, "growth": peak - before, "resident": before, "rss_growth": None}
    resident = resident_bytes(model, batch)
    growth, rss_growth = profiled_peak(fn, engine_only)
    return {
        "total": resident + growth,
        "growth": growth,
        "resident": resident,
        "rss_growth": rss_growth,
    }


def measure_row(spec: dict, fresh_process: bool) -> dict:
    """`worker(spec)`, in a fresh Python process if asked; a failed worker raises."""
    if not fresh_process:
        return worker(spec)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join([str(BENCHMARKS.parent), str(BENCHMARKS), *inherited])
    done = subprocess.run(
        [sys.executable, "-m", "perf_suite.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:]) or "(no output)"
        raise RuntimeError(f"The memory worker for {spec} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings: MemorySettings, rt: Runtime) -> dict:
    rows = []
    for batch_size in settings.batch_sizes:
        for mode in settings.modes:
            parse_mode(mode)  # an unknown mode fails here, not in a worker
            spec = {
                "shape": settings.shape,
                "batch_size": batch_size,
                "mode": mode,
                "device": str(rt.device),
                "dtype": str(rt.dtype).removeprefix("torch."),
            }
            row = {**spec, **measure_row(spec, settings.fresh_process)}
            if not row["total"] > row["growth"] > 0:
                raise RuntimeError(f"Implausible memory measurement: {row}.")
            rows.append(row)
    return {"shape": settings.shape, "model": describe_shape(settings.shape), "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"{result['shape']} ({result['model']}); each row in a fresh process.\n",
        "| batch | mode | peak MiB | vs train step | growth MiB | growth vs train step "
        "| peak RSS growth MiB | RSS growth vs train step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts: dict[str, list[tuple[int, float]]] = {}
    train = {r["batch_size"]: r for r in result["rows"] if r["mode"] == "train step"}
    for r in result["rows"]:
        t = train.get(r["batch_size"])
        rel = r["total"] / t["total"] if t else float("nan")
        rel_growth = r["growth"] / t["growth"] if t else float("nan")
        rss, t_rss = r.get("rss_growth"), t.get("rss_growth") if t else None
        rss_cell = f"{rss / MIB:.0f}" if rss else "n/a"
        rss_rel = f"{rss / t_rss:.2f}" if rss and t_rss else "n/a"
        lines.append(
            f"| {r['batch_size']} | {r['mode']} | {r['total'] / MIB:.0f} | {rel:.2f} "
            f"| {r['growth'] / MIB:.0f} | {rel_growth:.2f} | {rss_cell} | {rss_rel} |"
        )
        if r["mode"].startswith("afr,") or r["mode"] == "afr":
            verdicts.setdefault(r["mode"], []).append((r["batch_size"], rel))
    note = (
        "\n*Peak*: bytes held by tensors at the peak (weights, batch and everything else alive "
        "counted once; CPU: from the profiler's allocation events, GPU: "
        "`torch.cuda.max_memory_allocated`). *Growth*: the peak minus what was allocated before "
        "the call. *Peak RSS growth*: the process's peak resident set (VmHWM, reset before the "
        "call) minus its RSS before (allocator caching, fragmentation and the profiler's own "
        "buffers included). *train step*: forward, backward and a first AdamW step (its states "
        "created). *micro-batch*: `micro_batch_size` = batch / 4; *checkpointing*: "
        "`gradient_checkpointing=True`; *afr gradients*: the AFR call up to the end of its last "
        "backward (`hf_afr::backward[...]`), i.e. the scoring engine without the |g*w| and "
        "z-score stage, which works in place on the gradient buffers (no RSS figure: the "
        "process peak covers the whole call).\n"
    )
    summary = [
        f"- {mode}: peak / train-step peak "
        + ", ".join(f"{rel:.2f} (batch {b})" for b, rel in pairs)
        + f"; worst {verdict(max(rel for _, rel in pairs), TARGETS['memory'])}."
        for mode, pairs in verdicts.items()
    ]
    return "\n".join(lines) + "\n" + note + "\n" + "\n".join(summary) + "\n"


if __name__ == "__main__":
    from transformers.utils import logging

    logging.set_verbosity_error()
    print(json.dumps(worker(json.loads(sys.argv[1]))))
