"""Bad input, as a new user meets it: one clear line on stderr, a non-zero exit, nothing written.

Every case runs the scripts' and the CLI's real entry points (`run_script`, `hf_afr.cli.main`)
in process; one case per tool also runs as a subprocess, exactly as a user types it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_script, write_image_folder
from helpers import tiny_vit_config
from transformers import ViTForImageClassification

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.cli import main as cli_main
from hf_afr.workflow.runner import run_script

finetune = load_script("finetune")
prune = load_script("prune")


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def snapshot(path: Path) -> dict[str, str] | str | None:
    """What is at `path`: a folder's files, a file's content, or None."""
    if path.is_file():
        return path.read_text()
    return digest(path) if path.is_dir() else None


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 4, "validation": 2})


@pytest.fixture(scope="module")
def broken_images(tmp_path_factory) -> Path:
    """An image folder with a truncated JPEG: it opens, but decoding fails."""
    root = write_image_folder(tmp_path_factory.mktemp("broken"), {"train": 4})
    good = root / "train" / "cat" / "0.png"
    from PIL import Image

    Image.open(good).convert("RGB").save(root / "train" / "cat" / "photo.jpg")
    data = (root / "train" / "cat" / "photo.jpg").read_bytes()
    (root / "train" / "cat" / "photo.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def pruned_dir(tiny_vit_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pruned")
    pruner = AFRPruner.from_pretrained(tiny_vit_dir, PrunerConfig(method="magnitude"))
    pruner.prune(show_progress=False)
    pruner.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def truncated_dir(pruned_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated")
    for path in pruned_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def base_args(model: str | Path, out: Path, data: list[str]) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--output_dir", str(out), *data,
        "--method", "magnitude", "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip


# (case id, script, extra arguments or a function of the fixtures, expected message)
CASES = [
    ("sparsity above 1", "finetune", ["--sparsity", "1.5"], "`sparsity` must be in [0, 1)"),
    ("negative sparsity", "prune", ["--sparsity", "-0.1"], "`sparsity` must be in [0, 1)"),
    ("unparsable sparsity", "prune", ["--sparsity", "abc"], "--sparsity: invalid float value"),
    ("unknown method", "finetune", ["--method", "foo"], "Unknown pruning method 'foo'"),
    (
        "no scoring batches",
        "prune",
        ["--num_batches", "0"],
        "`num_batches` must be an integer >= 1",
    ),
    ("misspelt option", "prune", ["--sparsty", "0.5"], "did you mean --sparsity?"),
    ("unknown scope", "prune", ["--scope", "everywhere"], "`scope` must be one of"),
    ("floor too high", "prune", ["--min_density", "0.5"], "`min_density` must be in"),
    ("nothing to prune", "prune", ["--target_modules", "no_such"], "No prunable parameters"),
    ("bad regex", "prune", ["--target_modules", "fc[1"], "Invalid module pattern"),
    ("unknown format", "prune", ["--checkpoint_format", "zip"], "`checkpoint_format` must be"),
    ("unknown embedded dataset", "prune", "embedded", "Unknown embedded dataset"),
    ("missing train folder", "finetune", "missing_dir", "does not exist"),
    ("empty train folder", "prune", "empty_dir", "is empty"),
    ("corrupt image", "prune", "broken_image", "photo.jpg is not a readable image"),
    ("dataset offline", "prune", "offline_dataset", "Dataset 'nobody/no-such-set'"),
    ("model offline", "prune", "offline_model", "Model 'nobody/no-such-model' is not a local"),
    ("truncated weights", "finetune", "truncated_model", "model.safetensors is truncated"),
    ("no dataset", "prune", "no_dataset", "Pass a dataset"),
    ("argument file typo", "prune", "file_typo", "Unknown argument 'sparsty' in the argument"),
    ("resume without masks", "finetune", "resume", "has no pruning_masks.safetensors"),
    ("resume another model", "finetune", "resume_other", "Cannot resume from"),
    ("no image processor", "prune", "no_processor", "pass --image_processor_name"),
    ("unknown control", "prune", ["--control", "flip"], "or one of 'shuffle', 'invert'"),
    ("no synflow rounds", "prune", ["--synflow_iterations", "0"], "`synflow_iterations` must be"),
    (
        "synflow rounds with N:M",
        "prune",
        ["--method", "synflow", "--pattern", "2:4"],
        "no N:M form",
    ),
    ("output holds a model", "prune", "model_in_out", "already holds a model; pass --overwrite"),
    ("output holds results", "finetune", "results_in_out", "already holds other files (e.g. all_"),
    ("output is a file", "finetune", "file_out", "is a file; pass a folder"),
    ("single-class folder", "prune", "one_class", "has one class folder ('cat')"),
    ("single-class dataset", "prune", "one_class_dataset", "one sub-folder per class, two or"),
    ("mistyped model folder", "finetune", "typo_model", "no-such-folder does not exist"),
    ("mistyped relative folder", "prune", "typo_relative", "./no-such-model does not exist"),
    (
        "grasp with checkpointing",
        "prune",
        ["--method", "grasp", "--gradient_checkpointing", "true"],
        "GraSP needs a double backward",
    ),
]


@pytest.mark.parametrize(("case", "script", "extra", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    case, script, extra, message, tiny_vit_dir, images, broken_images, truncated_dir,
    pruned_dir, tmp_path, capsys,
):  # fmt: skip
    out = tmp_path / "out"
    model: str | Path = tiny_vit_dir
    data = ["--train_dir", str(images / "train")]
    if extra == "embedded":
        data, extra = ["--dataset_name", "hf_afr:no-such-set"], []
    elif extra == "missing_dir":
        data, extra = ["--train_dir", str(tmp_path / "nowhere")], []
    elif extra == "empty_dir":
        (tmp_path / "empty" / "cat").mkdir(parents=True)
        data, extra = ["--train_dir", str(tmp_path / "empty")], []
    elif extra == "broken_image":
        data, extra = ["--train_dir", str(broken_images / "train")], []
    elif extra == "offline_dataset":
        data, extra = ["--dataset_name", "nobody/no-such-set"], []
    elif extra == "offline_model":
        model, extra = "nobody/no-such-model", []
    elif extra == "truncated_model":
        model, extra = truncated_dir, []
    elif extra == "no_dataset":
        data, extra = [], []
    elif extra == "file_typo":
        (tmp_path / "args.json").write_text(json.dumps({"sparsty": 0.5}))
        args = [str(tmp_path / "args.json"), *base_args(model, out, data)]
        extra = None
    elif extra == "no_processor":
        model = tmp_path / "no-processor"
        ViTForImageClassification(tiny_vit_config(patch_size=4)).save_pretrained(model)
        extra = []
    elif extra == "resume":
        (tmp_path / "checkpoint-1").mkdir()
        extra = ["--do_train", "--resume_from_checkpoint", str(tmp_path / "checkpoint-1")]
    elif extra == "resume_other":  # this model's masks, but the weights of another shape
        checkpoint = tmp_path / "checkpoint-1"
        ViTForImageClassification(
            tiny_vit_config(patch_size=4, intermediate_size=48)
        ).save_pretrained(checkpoint)
        (checkpoint / "pruning_masks.safetensors").write_bytes(
            (pruned_dir / "pruning_masks.safetensors").read_bytes()
        )
        (checkpoint / "pruner_config.json").write_bytes(
            (pruned_dir / "pruner_config.json").read_bytes()
        )
        extra = ["--do_train", "--max_steps", "1", "--report_to", "none"]
        extra += ["--resume_from_checkpoint", str(checkpoint)]
    elif extra == "model_in_out":
        ViTForImageClassification(tiny_vit_config(patch_size=4)).save_pretrained(out)
        extra = []
    elif extra == "results_in_out":
        out.mkdir()
        (out / "all_results.json").write_text('{"eval_accuracy": 0.98}')
        extra = ["--do_train"]
    elif extra == "file_out":
        out.write_text("notes")
        extra = []
    elif extra == "one_class":
        (tmp_path / "one" / "cat").mkdir(parents=True)
        for image in (images / "train" / "cat").iterdir():
            (tmp_path / "one" / "cat" / image.name).write_bytes(image.read_bytes())
        data, extra = ["--train_dir", str(tmp_path / "one")], []
    elif extra == "one_class_dataset":  # the same folder, loaded by `datasets` itself
        (tmp_path / "one" / "cat").mkdir(parents=True)
        for image in (images / "train" / "cat").iterdir():
            (tmp_path / "one" / "cat" / image.name).write_bytes(image.read_bytes())
        data, extra = ["--dataset_name", str(tmp_path / "one")], []
    elif extra == "typo_model":
        model, extra = tmp_path / "no-such-folder", []
    elif extra == "typo_relative":
        model, extra = "./no-such-model", []
    if extra is not None:
        args = [*base_args(model, out, data), *extra]
    before, out_before = digest(Path(tiny_vit_dir)), snapshot(out)
    main = finetune.main if script == "finetune" else prune.main
    status = run_script(f"{script}.py", main, args)

    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert status != 0
    assert "Traceback" not in captured.err + captured.out
    assert errors and errors[-1].startswith(f"{script}.py: error: "), captured.err
    assert message in errors[-1], errors[-1]
    assert sum(": error: " in line for line in errors) == 1
    assert snapshot(out) == out_before  # nothing written, nothing overwritten
    assert digest(Path(tiny_vit_dir)) == before


def test_the_scripts_say_it_in_one_line_from_the_shell(tiny_vit_dir, images, tmp_path):
    out = tmp_path / "out"
    args = base_args(tiny_vit_dir, out, ["--train_dir", str(images / "train")])
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prune.py"), *args, "--sparsity", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "prune.py: error: `sparsity` must be in [0, 1) (the fraction of prunable weights set to "
        "zero), got 2.0. For 90% sparsity pass 0.9."
    ]
    assert not out.exists()
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_argument_file_with_command_line_overrides(tiny_vit_dir, images, tmp_path):
    args = {
        "model_name_or_path": tiny_vit_dir,
        "train_dir": str(images / "train"),
        "output_dir": str(tmp_path / "from-file"),
        "method": "magnitude",
        "sparsity": 0.5,
        "use_cpu": True,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "args.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in args.items()))
    out = tmp_path / "overridden"
    for name in ("args.json", "args.yaml"):
        argv = [str(tmp_path / name), "--output_dir", str(out), "--sparsity", "0.7"]
        argv += ["--overwrite_output_dir"]  # the second run writes into the first one's folder
        assert run_script("prune.py", prune.main, argv) == 0
        result = json.loads((out / "pruning_results.json").read_text())
        assert result["mask_sparsity"] == pytest.approx(0.7, abs=1e-3)
        assert not (tmp_path / "from-file").exists()


def test_prune_help_shows_only_what_applies(capsys):
    with pytest.raises(SystemExit):
        prune.main(["--help"])
    text = capsys.readouterr().out
    assert "--sparsity" in text and "--scoring_batch_size" in text and "--output_dir" in text
    for training_only in ("--learning_rate", "--lr_scheduler_type", "--adam_beta1", "--optim"):
        assert training_only not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{truncated}"], "model.safetensors is truncated"),
        (["report", "{nowhere}"], "does not exist"),
        (["compact", "{truncated}", "{out}"], "model.safetensors is truncated"),
        (["densify", "{pruned}", "{out}"], "is not a compact checkpoint"),
        (["report", "nobody/no-such-model"], "neither a local folder nor a downloadable"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, pruned_dir, truncated_dir, tmp_path, capsys):
    paths = {
        "truncated": truncated_dir,
        "nowhere": tmp_path / "nowhere",
        "out": tmp_path / "out",
        "pruned": pruned_dir,
    }
    status = cli_main([arg.format(**paths) for arg in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_report_checks_the_weights_against_the_masks(pruned_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    assert cli_main(["report", str(pruned_dir)]) == 0
    assert "weights checked against the masks" in capsys.readouterr().out
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in pruned_dir.iterdir():
        (edited / path.name).write_bytes(path.read_bytes())
    state = load_file(edited / "model.safetensors")
    key = next(k for k in state if k.endswith("intermediate.dense.weight"))  # 4.x names on disk
    state[key] = torch.ones_like(state[key])  # a dense tensor where the mask prunes
    save_file(state, edited / "model.safetensors", metadata={"format": "pt"})
    assert cli_main(["report", str(edited)]) == 1
    assert "nonzero where the masks prune them" in capsys.readouterr().err


def test_cli_help_imports_nothing_heavy():
    code = "import sys; from hf_afr.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout


def test_saved_files_are_readable_by_others(tiny_vit_dir, tmp_path):
    old = os.umask(0o022)
    try:
        pruner = AFRPruner.from_pretrained(tiny_vit_dir, PrunerConfig(method="magnitude"))
        pruner.prune(show_progress=False)
        for fmt in ("dense", "compact"):
            pruner.save_pretrained(tmp_path / fmt, fmt)
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / fmt).iterdir()}
            assert set(modes.values()) == {0o644}, modes
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def compact_dir(pruned_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compact") / "model"
    assert cli_main(["compact", str(pruned_dir), str(folder)]) == 0
    return folder


def test_cli_compact_of_a_compact_checkpoint_says_so(compact_dir, tmp_path, capsys):
    capsys.readouterr()
    status = cli_main(["compact", str(compact_dir), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "is already a compact checkpoint" in err[0], err
    assert not (tmp_path / "out").exists()


def _save_before_prune(model_dir, out):
    AFRPruner.from_pretrained(model_dir).save_pretrained(out)


def _push_before_prune(model_dir, out):
    AFRPruner.from_pretrained(model_dir).push_to_hub("someone/never-pruned")


def _shrunk(model_dir):
    from hf_afr import shrink

    pruner = AFRPruner.from_pretrained(model_dir, PrunerConfig(method="magnitude"))
    pruner.prune(show_progress=False)
    shrink(pruner.model)
    return pruner


def _save_shrunk_model(model_dir, out):
    _shrunk(model_dir).model.save_pretrained(out)


def _save_shrunk_pruner(model_dir, out):
    _shrunk(model_dir).save_pretrained(out)


def _mistyped_path(model_dir, out):
    AFRPruner.from_pretrained(Path(model_dir).parent / "no-such-model")


# Library calls: (case id, call, expected message); each raises and writes nothing.
LIBRARY_CASES = [
    ("save before prune", _save_before_prune, "has not been pruned yet: call `prune(batches)`"),
    ("push before prune", _push_before_prune, "has not been pruned yet: call `prune(batches)`"),
    ("save a shrunk model", _save_shrunk_model, "so it cannot be saved"),
    ("save a shrunk pruner", _save_shrunk_pruner, "so it cannot be saved"),
    ("mistyped local path", _mistyped_path, "no-such-model does not exist"),
]


@pytest.mark.parametrize(
    ("case", "call", "message"), LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES]
)
def test_library_bad_input_raises_one_line_and_writes_nothing(
    case, call, message, tiny_vit_dir, tmp_path
):
    out = tmp_path / "out"
    before = digest(Path(tiny_vit_dir))
    with pytest.raises((ValueError, RuntimeError)) as err:
        call(tiny_vit_dir, out)
    assert message in str(err.value) and "\n" not in str(err.value).strip(), str(err.value)
    assert not out.exists()
    assert digest(Path(tiny_vit_dir)) == before


def test_sparsity_zero_says_it_prunes_nothing(tiny_vit_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        *base_args(tiny_vit_dir, out, ["--train_dir", str(images / "train")]),
        "--sparsity",
        "0",
    ]
    assert run_script("prune.py", prune.main, args) == 0
    assert "WARNING: --sparsity 0 prunes nothing: the saved model is the dense model" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "pruning_results.json").read_text())["mask_sparsity"] == 0.0


def test_shrink_and_bench_of_a_never_pruned_model_say_so(tiny_vit_dir, tmp_path, capsys, caplog):
    from hf_afr import shrink

    model = ViTForImageClassification.from_pretrained(tiny_vit_dir)
    with caplog.at_level("WARNING", logger="hf_afr"):
        shrink(model)
    assert "it was never pruned, so there is nothing to remove" in caplog.text
    argv = ["bench", tiny_vit_dir, "--batch-size", "1", "--rounds", "1", "--layer-rounds", "1"]
    assert cli_main([*argv, "--no-shrink", "--kernels", "dense"]) == 0
    assert f"Note: {tiny_vit_dir} was not pruned by hf_afr" in capsys.readouterr().out
