"""What a script run leaves in its output folder: the model, its card and its results land
together or not at all; a failed or interrupted run leaves no empty folder."""

from __future__ import annotations

import json

import pytest
from conftest import load_script, write_image_folder

from hf_afr import ResumingTrainer
from hf_afr.checkpoint import save as save_module
from hf_afr.workflow.runner import run_script

finetune = load_script("finetune")

pytestmark = pytest.mark.usefixtures("single_thread")


def digest(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 2, "validation": 1})


def args(model_dir, images, out, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(out),
        "--train_dir", str(images / "train"), "--validation_dir", str(images / "validation"),
        "--method", "magnitude", "--sparsity", "0.5", "--use_cpu", "--disable_tqdm", "true",
        "--report_to", "none", "--do_train", "--do_eval", "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--save_strategy", "no",
        "--optim", "adamw_torch", "--lr_scheduler_type", "cosine", *map(str, extra),
    ]  # fmt: skip


@pytest.mark.slow
def test_model_card_and_results_land_together(tiny_vit_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "vit-magnitude50"
    monkeypatch.chdir(tmp_path)
    relative = out.relative_to(tmp_path)
    assert run_script("finetune.py", finetune.main, args(tiny_vit_dir, images, relative)) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "trainer_state.json"} <= files
    assert {"train_results.json", "eval_results.json", "all_results.json"} <= files
    everything = json.loads((out / "all_results.json").read_text())
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert everything["eval_accuracy"] == eval_results["eval_accuracy"]
    assert everything["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    card = (out / "README.md").read_text()
    assert "adamw_torch (learning rate" in card and "cosine with warmup" in card
    assert "OptimizerNames" not in card and "SchedulerType" not in card
    assert f'pipeline("image-classification", model="{relative}")' in card  # where it is


@pytest.mark.slow
def test_a_failed_save_leaves_the_old_model_and_its_results(
    tiny_vit_dir, images, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    assert run_script("finetune.py", finetune.main, args(tiny_vit_dir, images, out)) == 0
    before = digest(out)

    def failing_card(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save_module, "save_model_card", failing_card)
    again = args(tiny_vit_dir, images, out, "--overwrite_output_dir", "--sparsity", "0.8")
    assert run_script("finetune.py", finetune.main, again) == 1
    assert digest(out) == before  # no new results beside the old model, no half-written model


@pytest.mark.slow
def test_an_interrupted_run_leaves_no_empty_folder(tiny_vit_dir, images, tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        assert self.args.output_dir and (tmp_path / "out").is_dir()  # Trainer created it
        raise KeyboardInterrupt

    monkeypatch.setattr(ResumingTrainer, "train", interrupted)
    assert (
        run_script("finetune.py", finetune.main, args(tiny_vit_dir, images, tmp_path / "out"))
        == 130
    )
    assert not (tmp_path / "out").exists()


def test_output_folder_rules(tmp_path):
    from hf_afr.workflow.outputs import check_output_dir, forget_outputs

    folder = tmp_path / "out"
    check_output_dir(str(folder), overwrite=False)  # a new folder: fine
    folder.mkdir()
    (folder / ".DS_Store").write_text("")
    check_output_dir(str(folder), overwrite=False)  # hidden entries do not count
    (folder / "checkpoint-4").mkdir()
    with pytest.raises(ValueError, match="holds training checkpoints \\(resume with"):
        check_output_dir(str(folder), overwrite=False)
    check_output_dir(str(folder), overwrite=False, resuming=True)
    check_output_dir(str(folder), overwrite=True)
    forget_outputs()
