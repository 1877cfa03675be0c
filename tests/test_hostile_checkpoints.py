"""Checkpoints from strangers: every crafted variant (benchmarks/hostile_checkpoints.py) raises
`CheckpointError` on every path, as one line naming the file and the field, writes nothing, and
never decompresses more than the bound its checked shape allows; plus the bounded readers."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForImageClassification

from hf_afr import AFRPruner, CheckpointError, PrunerConfig
from hf_afr.checkpoint import codec, read_compact_weights
from hf_afr.checkpoint.compact import COMPACT_FORMAT
from hf_afr.cli import main
from hf_afr.files import contained_file
from hf_afr.untrusted import check_shape, parse_json
from hf_afr.workflow.steps import load_pruner

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("hostile", BENCHMARKS / "hostile_checkpoints.py")
hostile = importlib.util.module_from_spec(_spec)
sys.modules["hostile"] = hostile
_spec.loader.exec_module(hostile)

CASES = [(v, path) for v in hostile.VARIANTS if v.expect == "error" for path in v.paths]
# Masks variants also reach the Trainer resume (the fine-tuning script's `load_pruner`).
CASES += [(v, "resume") for v in hostile.VARIANTS if v.name.startswith("masks-shapes")]
PEAK_BYTES = 64 * 2**20  # traced (numpy / Python) allocations of one read; the model is ~0.3 MB


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    return hostile.build_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="module")
def largest(bases) -> int:
    """Elements of the model's largest tensor: what one mask may legitimately decode to."""
    model = AutoModelForImageClassification.from_pretrained(bases["dense"])
    return max(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def crafted(bases):
    root, made = bases["dense"].parent, {}  # beside the bases, as the benchmark crafts them

    def get(variant):
        if variant.name not in made:
            if variant.name == "many-entries":  # 2,000 entries fail as 20,000 do, sooner
                variant = dataclasses.replace(variant, craft=hostile.many_entries(2_000))
            made[variant.name] = hostile.craft_variant(variant, bases, root)
        return made[variant.name]

    return get


@pytest.fixture
def inflate_calls(monkeypatch):
    """Every bound a zlib stream is decompressed with (the real decompression still runs)."""
    calls = []
    real = codec._inflate

    def spy(data, max_size, name):
        calls.append(max_size)
        return real(data, max_size, name)

    monkeypatch.setattr(codec, "_inflate", spy)
    return calls


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
        for p in sorted(folder.iterdir())
    }


def _run(path: str, folder: Path, dst: Path, bases, capsys) -> str:
    """Run one reading path; return its one-line error (asserting our error type)."""
    if path in ("report", "densify", "compact"):
        argv = [path, str(folder)] + ([str(dst)] if path != "report" else [])
        assert main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"hf-afr {path}: error: "), lines
        assert "--debug" not in lines[0]  # a user error, not a crash
        return lines[0]
    with pytest.raises(CheckpointError) as info:
        if path == "load":
            AutoModelForImageClassification.from_pretrained(folder)
        elif path == "pruner":
            AFRPruner.from_pretrained(folder)
        else:  # resume: a fine-tuning run picks up a checkpoint's masks
            args = SimpleNamespace(
                model_name_or_path=str(bases["dense"]), cache_dir=None, model_revision=None
            )
            labels = {i: f"LABEL_{i}" for i in range(3)}  # the base's: a run of this model
            load_pruner(args, PrunerConfig(), labels, str(folder))
    err = info.value
    assert str(err).startswith(err.path) and "\n" not in str(err)
    return str(err)


@pytest.mark.parametrize(("variant", "path"), CASES, ids=[f"{v.name}-{p}" for v, p in CASES])
def test_hostile_variant_is_one_line_naming_file_and_field_and_writes_nothing(
    variant, path, bases, crafted, largest, inflate_calls, tmp_path, capsys
):
    folder = crafted(variant)
    before = _digest(folder)
    dst = tmp_path / "dst"
    tracemalloc.start()
    try:
        line = _run(path, folder, dst, bases, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(folder) in line  # the file at fault is named by its path
    if variant.field is not None:
        assert variant.field in line
    assert not dst.exists() and _digest(folder) == before
    assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MiB traced"
    # The decompression bound follows from the model's shapes, never from the declared ones.
    bound = largest + largest // 255 + 1
    assert all(max_size <= bound for max_size in inflate_calls), inflate_calls


def test_a_slow_path_fails_before_decoding_any_mask(bases, crafted, inflate_calls):
    """Thousands of declared entries that are no tensor of the model: refused from the header."""
    folder = crafted(next(v for v in hostile.VARIANTS if v.name == "many-entries"))
    with pytest.raises(CheckpointError, match="not a tensor of the model"):
        AutoModelForImageClassification.from_pretrained(folder)
    assert inflate_calls == []


def test_report_checks_the_file_from_pretrained_loads(bases, crafted, capsys):
    folder = crafted(next(v for v in hostile.VARIANTS if v.name == "both-formats-report"))
    assert main(["report", str(folder)]) == 0
    assert capsys.readouterr().out.startswith(f"dense checkpoint {folder}")


def test_links_inside_a_folder_and_into_the_hub_cache_are_read(tmp_path):
    snapshot = tmp_path / "models--a--b" / "snapshots" / "abc"
    blobs = tmp_path / "models--a--b" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "1234").write_text("{}")
    (snapshot / "config.json").symlink_to(blobs / "1234")
    (snapshot / "inner.json").symlink_to(snapshot / "config.json")
    assert contained_file(snapshot, "config.json") == str(snapshot / "config.json")
    assert contained_file(snapshot, "inner.json") == str(snapshot / "inner.json")
    assert contained_file(snapshot, "absent.json") is None
    (snapshot / "outside.json").symlink_to(tmp_path / "models--a--b")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        contained_file(snapshot, "outside.json")


def test_compact_files_without_checksums_still_load(bases, tmp_path):
    """Files written before the CRC-32 field existed have none: they are read as before."""
    folder = tmp_path / "old"
    folder.mkdir()
    for p in bases["compact"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())

    def drop_checksums(tensors, sparse, metadata):
        for entry in sparse.values():
            del entry["crc32"]

    hostile.rewrite_compact(folder, drop_checksums)
    old = read_compact_weights(folder / hostile.COMPACT)
    new = read_compact_weights(bases["compact"] / hostile.COMPACT)
    assert all(e.crc32 is None for e in old[2].values())
    assert all(e.crc32 is not None for e in new[2].values())
    assert all((old[1][k] == new[1][k]).all() for k in new[1])


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 65 + "]" * 65, "levels deep"),
        ('{"a": "[[[[", "b": [1]}', None),  # brackets inside strings do not count
        (b'{"a": "\xff"}', "not UTF-8 text"),
        ('{"a": 1, "a": 2}', "key 'a' twice"),
        ('{"a": NaN}', "only finite numbers"),
        ('{"a": Infinity}', "only finite numbers"),
        ('{"a": 1', "not valid JSON"),
        ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
        ("x" * 10_001, "more than the 10000"),
    ],
)
def test_bounded_json(text, message):
    if message is None:
        assert parse_json(text, "f.json", "field", max_bytes=10_000) == {"a": "[[[[", "b": [1]}
        return
    with pytest.raises(CheckpointError, match=message) as info:
        parse_json(text, "f.json", "field", max_bytes=10_000)
    assert str(info.value).startswith("f.json: `field`: ")


@pytest.mark.parametrize(
    "shape", [5, [-1, 2], [1.5, 2], [True], [2**32, 2**32], ["3"], [1] * 9, "[1]"]
)
def test_declared_shapes_are_checked(shape):
    with pytest.raises(CheckpointError, match="f.bin: `shape`"):
        check_shape(shape, "f.bin", "shape", max_numel=2**40)


def test_the_error_is_one_line_and_survives_pickling():
    err = CheckpointError("dir/file.json", "a.b", "is\nwrong   here.")
    assert str(err) == "dir/file.json: `a.b`: is wrong here."
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.path, again.field) == (str(err), err.path, err.field)
    assert isinstance(err, ValueError)


def test_metadata_format_is_named(bases, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for p in bases["compact"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    hostile.rewrite_compact(folder, lambda t, s, m: m.update(format="x" * 10_000))
    with pytest.raises(CheckpointError, match="metadata.format") as info:
        read_compact_weights(folder / hostile.COMPACT)
    assert len(str(info.value)) < 400 and COMPACT_FORMAT in str(info.value)
    assert json.loads((folder / "config.json").read_text())["quantization_config"]
    assert os.listdir(folder) == os.listdir(bases["compact"])
