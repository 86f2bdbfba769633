"""A small study folder made from the shared pruned run, for the report tests (HTML and browser):
two finetuning recipes, several methods and seeds, known accuracies and measured speed-ups."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

RECIPE = {
    "epochs": 4,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "schedule": "cosine",
    "milestones": [0.5, 0.75],
    "milestones_epochs": [2, 3],
    "step_size": 30,
    "gamma": 0.1,
    "batch_size": 64,
    "label_smoothing": 0.0,
    "seed": 0,
    "weight_decay": 0.0005,
    "kd": {"enabled": False},
    "augmentation": "none",
    "init": "pruned",
    "trainability": None,
}

# (run folder, method, target, seed, finetune lr, final top1, measured torch-cpu speed-up, its
# interval)
RUNS = [
    ("l1-s0", "l1", 2.0, 0, 0.01, 96.0, 1.60, [1.55, 1.65]),
    ("l1-s1", "l1", 2.0, 1, 0.01, 95.0, 1.70, [1.66, 1.74]),
    ("fpgm-s0", "fpgm", 2.0, 0, 0.01, 97.0, 1.40, [1.35, 1.45]),
    ("lamp-s0", "lamp", 2.0, 0, 0.01, 93.0, 1.02, [0.97, 1.07]),  # not distinguishable from 1.0
    ("l1-lr001-s0", "l1", 2.0, 0, 0.001, 91.0, 1.62, [1.58, 1.66]),
    ("l1-3x-s0", "l1", 3.0, 0, 0.01, 89.0, 2.10, [2.02, 2.18]),
]


def make_study(src: Path, dst: Path, unfinished: bool = True) -> list[Path]:
    """Write the RUNS (and, with ``unfinished``, a record whose finetuning has not run) under
    ``dst/runs``; return the record files written, finished ones first."""
    base = json.loads((src / "record.json").read_text())
    out = []
    for i, (name, method, target, seed, lr, acc, speedup, ci) in enumerate(RUNS):
        data = copy.deepcopy(base)
        data["run_id"] = name
        data["method"]["key"] = method
        data["method"]["target_speedup"] = target
        data["dataset"] = {
            "name": "digits",
            "image_size": 32,
            "num_classes": 10,
            "train_size": 1347,
            "test_size": 450,
        }
        data["accuracy"] = {"metric": "top1", "base": 97.5, "pruned": 20.0 + i, "finetuned": acc}
        data["finetune"] = {
            **copy.deepcopy(RECIPE),
            "lr": lr,
            "seed": seed,
            "history": [
                {"epoch": e, "loss": 1.0 / e, "lr": lr, "accuracy": acc - 4 + e}
                for e in range(1, 5)
            ],
        }
        data["config"]["seed"] = seed
        data["stages"].setdefault("finetune", data["stages"]["prune"])
        for p in data["latency"]:
            if p["variant"] == "pruned" and p["backend"] == "torch-cpu":
                p["speedup_vs_dense"], p["speedup_ci"] = speedup, ci
        out.append(_write(dst / "runs" / name, data))
    if unfinished:
        data = copy.deepcopy(base)
        data["run_id"] = "waiting"
        data["dataset"] = {"name": "digits", "image_size": 32, "num_classes": 10}
        data["config"]["dataset"] = {"name": "digits"}
        data["config"]["finetune"] = {"epochs": 4}
        data["stages"].pop("finetune", None)
        out.append(_write(dst / "runs" / "waiting", data))
    return out


def _write(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    path = folder / "record.json"
    path.write_text(json.dumps(data))
    return path
