"""Load structured checkpoints where hf_afr cannot be imported: run as `python -I -S THIS JOB.json`.

`-I -S` drop the working directory, PYTHONPATH and every `.pth` file (hf_afr's editable install
is one); the interpreter's site-packages are then added back as plain paths, so torch and
transformers import and hf_afr does not. Where hf_afr is installed into site-packages itself
(not editable), a finder refuses it as well. The job file lists checkpoints to load with
`trust_remote_code=True` (from a folder or a Hub id), with the inputs and logits saved beside
them (or `expect_error`: the error is reported); the results go as JSON to `job["results"]`.
"""

import importlib.abc
import json
import site
import sys

for path in site.getsitepackages():
    sys.path.append(path)


class _NoHfAfr(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "hf_afr" or fullname.startswith("hf_afr."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _NoHfAfr())


def main(job_file: str) -> None:
    with open(job_file) as f:
        job = json.load(f)
    try:
        import hf_afr  # noqa: F401
    except ImportError:
        importable = False
    else:
        importable = True
    import torch
    from transformers import AutoModelForImageClassification, pipeline

    results = {"hf_afr_importable": importable, "models": {}}
    for name, entry in job["models"].items():
        try:
            model = AutoModelForImageClassification.from_pretrained(
                entry["source"], trust_remote_code=True
            ).eval()
        except Exception as err:  # noqa: BLE001 - reported to the test, which expects it
            if not entry.get("expect_error"):
                raise
            results["models"][name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        inputs, expected = torch.load(entry["reference"])
        with torch.no_grad():
            logits = model(pixel_values=inputs).logits
        result = {
            "class_mro": [cls.__name__ for cls in type(model).__mro__[:2]],
            "parameters": sum(p.numel() for p in model.parameters()),
            "max_abs_diff": float((logits - expected).abs().max()),
        }
        if entry.get("pipeline"):
            classifier = pipeline(
                "image-classification", model=entry["source"], trust_remote_code=True
            )
            from PIL import Image

            predictions = classifier(Image.open(entry["pipeline"]), top_k=1)
            result["pipeline_label"] = predictions[0]["label"]
        if entry.get("train"):
            result["trained"] = train_one_step(model, inputs)
        results["models"][name] = result
    with open(job["results"], "w") as f:
        json.dump(results, f)
    assert not any(name.split(".")[0] == "hf_afr" for name in sys.modules)


def train_one_step(model, inputs) -> bool:
    """One Trainer step; whether every weight kept its shape and some weight changed."""
    import tempfile

    import torch
    from transformers import Trainer, TrainingArguments

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = [{"pixel_values": x, "labels": torch.tensor(i % 2)} for i, x in enumerate(inputs)]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out, max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True,
            learning_rate=0.1, save_strategy="no",
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=data).train()
    after = model.state_dict()
    same_shapes = all(after[k].shape == v.shape for k, v in before.items())
    return same_shapes and any(not torch.equal(after[k], v) for k, v in before.items())


if __name__ == "__main__":
    main(sys.argv[1])
