"""Hostile checkpoints: outcome, peak memory and time of reading crafted files.

A small pruned ViT is saved in both formats; each variant below copies one of them and crafts
a file (the variants of the hostile-checkpoint issue: memory bombs, amplification, a slow path,
malformed fields, trusted metadata, links and mixed formats). Each reading path then runs in a
fresh subprocess: peak resident memory (`VmHWM`, sampled if the run is cut off) and wall time
of the read (after the imports):

- `load`: `AutoModelForImageClassification.from_pretrained` after `import hf_afr`;
- `pruner`: `AFRPruner.from_pretrained`;
- `report`, `densify`, `compact`: the `hf-afr` command (DST a fresh folder).

Outcome: `error` (hf_afr's `CheckpointError`, one line), `raw <Type>` (any other exception),
`ok`, `timeout`. `written`: files left in DST, or a changed source folder.

    python benchmarks/hostile_checkpoints.py [--only NAME ...] [--timeout 120] [--memory-cap-gb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_afr import AFRPruner, PrunerConfig  # noqa: E402
from hf_afr.checkpoint import read_compact_weights  # noqa: E402

COMPACT = "model.compact.safetensors"
MASKS = "pruning_masks.safetensors"
BIG = [2**15, 2**14]  # 2^29 weights declared by a 9-byte mask
DEEP = "[" * 100_000 + "]" * 100_000


@dataclass(frozen=True)
class Variant:
    """A crafted checkpoint: its base format, how to craft it, the paths that read it, and the
    field the error must name (None: the file itself is at fault)."""

    name: str
    base: str
    craft: Callable[[Path], None]
    paths: tuple[str, ...]
    field: str | None
    expect: str = "error"


def build_bases(root: Path) -> dict[str, Path]:
    """A pruned tiny ViT saved dense and compact under `root`."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, num_labels=3,
    )  # fmt: skip
    pruner = AFRPruner(ViTForImageClassification(config).eval(), PrunerConfig("magnitude", 0.9))
    pruner.prune(show_progress=False)
    bases = {"dense": root / "base-dense", "compact": root / "base-compact"}
    for fmt, folder in bases.items():
        pruner.save_pretrained(folder, checkpoint_format=fmt)
    return bases


# ----------------------------------------------------------------------------- crafting


def rewrite_compact(folder: Path, edit) -> None:
    """Apply `edit(tensors, sparse, metadata)` to the compact file; `sparse` may become text."""
    path = folder / COMPACT
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    sparse = json.loads(metadata["sparse_tensors"])
    result = edit(tensors, sparse, metadata)
    metadata["sparse_tensors"] = result if isinstance(result, str) else json.dumps(sparse)
    save_file(tensors, str(path), metadata=metadata)


def _mask_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def declare(shape, code: int, payload: bytes, nnz: int = 0, which: int = 0):
    """An edit making entry `which` declare `shape` with the mask `code + payload`."""

    def edit(tensors, sparse, metadata):
        key = list(sparse)[which]
        sparse[key].update(shape=list(shape), nnz=nnz, crc32=None)
        sparse[key]["encoding"] = ["bitmask", "bitmask-zlib", "gaps-zlib", "pruned-gaps-zlib"][code]
        tensors[key + ".afr_shape"] = torch.tensor(shape, dtype=torch.int64)
        tensors[key + ".afr_mask"] = _mask_tensor(bytes([code]) + payload)
        tensors[key + ".afr_values"] = torch.zeros(nnz, dtype=tensors[key + ".afr_values"].dtype)

    return lambda folder: rewrite_compact(folder, edit)


def field_edit(key_field: str, value) -> Callable[[Path], None]:
    """Set one field of the first entry (written as JSON, `Infinity` allowed)."""

    def edit(tensors, sparse, metadata):
        sparse[next(iter(sparse))][key_field] = value

    return lambda folder: rewrite_compact(folder, edit)


def many_entries(n: int = 20_000) -> Callable[[Path], None]:
    def edit(tensors, sparse, metadata):
        mask = _mask_tensor(b"\x01" + zlib.compress(np.packbits([1] + [0] * 63).tobytes()))
        for i in range(n):
            key = f"extra.{i}.weight"
            sparse[key] = dict(param=key, shape=[8, 8], dtype="float32", nnz=1,
                               encoding="bitmask-zlib")  # fmt: skip
            tensors[key + ".afr_values"] = torch.ones(1)
            tensors[key + ".afr_mask"] = mask.clone()
            tensors[key + ".afr_shape"] = torch.tensor([8, 8])

    return lambda folder: rewrite_compact(folder, edit)


def swap_params(tensors, sparse, metadata):
    keys = [k for k in sparse if "attention.query" in k or "attention.key" in k][:2]
    a, b = sparse[keys[0]], sparse[keys[1]]
    a["param"], b["param"] = b["param"], a["param"]


def raw_bitmask_swapped_bits(folder: Path) -> None:
    """Re-encode the first entry as a raw bitmask with its checksum, then move one kept weight."""
    masks = read_compact_weights(folder / COMPACT, load_values=False)[1]

    def edit(tensors, sparse, metadata):
        key = next(iter(sparse))
        bits = masks[sparse[key]["param"]].numpy().reshape(-1).copy()
        data = b"\x00" + np.packbits(bits).tobytes()
        sparse[key].update(encoding="bitmask", crc32=zlib.crc32(data))
        kept, pruned = int(np.flatnonzero(bits)[0]), int(np.flatnonzero(~bits)[0])
        bits[kept], bits[pruned] = False, True
        tensors[key + ".afr_mask"] = _mask_tensor(b"\x00" + np.packbits(bits).tobytes())

    rewrite_compact(folder, edit)


def masks_shapes(value) -> Callable[[Path], None]:
    def craft(folder: Path) -> None:
        path = folder / MASKS
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if isinstance(value, str):
            metadata["shapes"] = value
        else:
            shapes = json.loads(metadata["shapes"])
            shapes[next(iter(shapes))] = value
            metadata["shapes"] = json.dumps(shapes)
        from safetensors.numpy import save_file as save_numpy

        save_numpy(tensors, str(path), metadata=metadata)

    return craft


def json_file(name: str, edit) -> Callable[[Path], None]:
    """Rewrite a JSON file of the folder: `edit(data)` returns the new data, text or bytes."""

    def craft(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        new = edit(data)
        if isinstance(new, bytes):
            (folder / name).write_bytes(new)
        else:
            (folder / name).write_text(new if isinstance(new, str) else json.dumps(new))

    return craft


def quant_field(name: str, value):
    def edit(data):
        data["quantization_config"][name] = value
        return data

    return json_file("config.json", edit)


def link_outside(folder: Path) -> None:
    secret = folder.parent / f"{folder.name}-secret.txt"
    secret.write_text("a file outside the checkpoint\n")
    (folder / "notes.txt").symlink_to(secret)


def both_formats(folder: Path) -> None:
    (folder / COMPACT).write_bytes((folder.parent / "base-compact" / COMPACT).read_bytes())


def _with(key: str, value):  # a JSON edit setting one key
    return lambda data: {**data, key: value}


VARIANTS = [
    Variant("valid-compact", "compact", lambda f: None, ("load", "pruner", "report", "densify"),
            None, expect="ok"),
    Variant("valid-dense", "dense", lambda f: None, ("pruner", "report", "compact"), None,
            expect="ok"),
    Variant("bomb-pruned-gaps", "compact", declare(BIG, 3, zlib.compress(b"")),
            ("load", "report", "densify"), "shape"),
    Variant("bomb-gaps", "compact", declare(BIG, 2, zlib.compress(b"")), ("load", "report"),
            "shape"),
    Variant("bomb-bitmask-zlib", "compact", declare(BIG, 1, zlib.compress(bytes(2**26))),
            ("load", "report"), "shape"),
    Variant("amplify-wrong-shape", "compact", declare([16384, 16384], 2, zlib.compress(b"")),
            ("densify",), "shape"),
    Variant("many-entries", "compact", many_entries(), ("load", "report", "densify"), "extra."),
    Variant("nnz-infinity", "compact", field_edit("nnz", float("inf")), ("load", "report"),
            "sparse_tensors"),
    Variant("nnz-2^62", "compact", field_edit("nnz", 2**62), ("load",), "nnz"),
    Variant("shape-2^62", "compact", field_edit("shape", [2**62, 2]), ("load", "densify"),
            "shape"),
    Variant("metadata-deep", "compact", lambda f: rewrite_compact(f, lambda *a: DEEP),
            ("load", "report"), "sparse_tensors"),
    Variant("masks-shapes-int", "dense", masks_shapes(5), ("pruner", "report", "compact"),
            "shapes"),
    Variant("masks-shapes-negative", "dense", masks_shapes([-1, 64]), ("pruner",), "shapes"),
    Variant("masks-shapes-float", "dense", masks_shapes([1.5, 64]), ("pruner",), "shapes"),
    Variant("masks-shapes-2^32", "dense", masks_shapes([2**32, 2**32]), ("pruner", "report"),
            "shapes"),
    Variant("masks-shapes-deep", "dense", masks_shapes(DEEP), ("pruner",), "shapes"),
    Variant("pruner-config-deep", "dense", json_file("pruner_config.json", lambda d: DEEP),
            ("pruner", "compact"), None),
    Variant("pruner-config-micro-batch-str", "dense",
            json_file("pruner_config.json", _with("micro_batch_size", "5")),
            ("pruner", "compact"), "micro_batch_size"),
    Variant("pruner-config-target-modules-int", "dense",
            json_file("pruner_config.json", _with("target_modules", 5)), ("compact",),
            "target_modules"),
    Variant("pruner-config-not-utf8", "dense", json_file("pruner_config.json",
            lambda d: b'{"method": "\xff"}'), ("pruner", "compact"), None),
    Variant("pruner-config-malformed", "compact",
            json_file("pruner_config.json", lambda d: "{"), ("pruner", "densify"), None),
    Variant("format-version-abc", "compact", quant_field("format_version", "abc"),
            ("load", "pruner"), "format_version"),
    Variant("format-version-infinity", "compact", quant_field("format_version", float("inf")),
            ("load",), "format_version"),
    Variant("format-version-null", "compact", quant_field("format_version", None), ("load",),
            "format_version"),
    Variant("quantization-config-string", "compact",
            json_file("config.json", _with("quantization_config", "hf_afr_compact")),
            ("pruner", "report", "densify"), "quantization_config"),
    Variant("param-unknown", "compact", field_edit("param", "vit.nowhere.weight"),
            ("load", "pruner", "densify"), "param"),
    Variant("params-swapped", "compact", lambda f: rewrite_compact(f, swap_params),
            ("load", "pruner", "densify"), "param"),
    Variant("raw-bitmask-bits-swapped", "compact",
            raw_bitmask_swapped_bits, ("load", "densify"),
            "afr_mask"),
    Variant("link-outside-dense", "dense", link_outside, ("compact",), None),
    Variant("link-outside-compact", "compact", link_outside, ("densify",), None),
    Variant("both-formats", "dense", both_formats, ("compact",), None),
    Variant("both-formats-report", "dense", both_formats, ("report",), None, expect="ok"),
]  # fmt: skip


def craft_variant(variant: Variant, bases: dict[str, Path], root: Path) -> Path:
    """A copy of the variant's base folder, crafted."""
    folder = root / variant.name
    shutil.copytree(bases[variant.base], folder, symlinks=True)
    variant.craft(folder)
    return folder


# ----------------------------------------------------------------------------- running

CHILD = r"""
import contextlib, io, json, os, resource, sys, time
folder, path, dst, cap = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
if cap > 0:
    resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30), int(cap * 2**30)))
import hf_afr, torch, transformers
from hf_afr.cli import main
start = time.perf_counter()
err_text, outcome = io.StringIO(), "ok"
try:
    with contextlib.redirect_stderr(err_text):
        if path == "load":
            transformers.AutoModelForImageClassification.from_pretrained(folder)
        elif path == "pruner":
            hf_afr.AFRPruner.from_pretrained(folder)
        else:
            args = [path, folder] + ([dst] if path != "report" else [])
            with contextlib.redirect_stdout(io.StringIO()) as out:
                status = main(args)
            if status:
                outcome = "exit %d" % status
            err_text.write(out.getvalue().splitlines()[0] if out.getvalue() else "")
    message = (err_text.getvalue().strip().splitlines()[-1:] or [""])[0]
except Exception as err:
    kind = getattr(hf_afr, "CheckpointError", None)
    outcome = "error" if kind is not None and isinstance(err, kind) else "raw " + type(err).__name__
    message = " ".join(str(err).split())
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 2**20
print(json.dumps(dict(outcome=outcome, message=message[:160], seconds=seconds, peak_gb=peak)))
"""


def _peak_gb(pid: int) -> float:
    """VmHWM of a process: its own peak (ru_maxrss would count the parent's size at fork)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        return 0.0


def run_path(folder: Path, path: str, timeout: float, cap: float, env: dict) -> dict:
    dst = folder.parent / f"{folder.name}-{path}-out"
    before = sorted(os.listdir(folder))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder), path, str(dst), str(cap)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder.parent,
    )  # fmt: skip
    peak, start = 0.0, time.perf_counter()
    while proc.poll() is None and time.perf_counter() - start < timeout:
        peak = max(peak, _peak_gb(proc.pid))  # the peak so far, should the run be cut off
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
        result = dict(outcome="timeout", message=f">= {peak:.2f} GB when stopped", seconds=timeout)
        result["peak_gb"] = peak
    else:
        stdout, stderr = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {
            "outcome": f"died rc={proc.returncode}", "message": stderr[-160:],
            "seconds": time.perf_counter() - start, "peak_gb": peak,
        }  # fmt: skip
    if result["outcome"].startswith("exit"):  # the CLI's one line is hf_afr's error line
        result["outcome"] = "error" if "error:" in result["message"] else result["outcome"]
    written = []
    if dst.exists():
        written = [str(p.relative_to(dst)) for p in dst.rglob("*")]
        result["bytes"] = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
        shutil.rmtree(dst)
    if sorted(os.listdir(folder)) != before:
        written.append("<source changed>")
    result["written"] = len(written)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="variant names to run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run (120)")
    parser.add_argument(
        "--memory-cap-gb", type=float, default=8.0, help="address-space cap of a run (8; 0: none)"
    )
    parser.add_argument(
        "--pythonpath",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
        help="hf_afr tree the runs import (default: this one; e.g. an older version's tree)",
    )
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.pythonpath)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bases = build_bases(root)
        print("| variant | path | outcome | peak GB | seconds | files written | message |")
        print("|---|---|---|---|---|---|---|")
        for variant in VARIANTS:
            if args.only and variant.name not in args.only:
                continue
            folder = craft_variant(variant, bases, root)
            for path in variant.paths:
                r = run_path(folder, path, args.timeout, args.memory_cap_gb, env)
                rows.append({"variant": variant.name, "path": path, **r})
                print(
                    f"| {variant.name} | {path} | {r['outcome']} | {r['peak_gb']:.2f} | "
                    f"{r['seconds']:.1f} | {r['written']} ({r.get('bytes', 0) / 2**20:.0f} MiB) | {r['message'][:110]} |",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
