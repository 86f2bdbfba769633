"""Training throughput (images per second) of pbkit's training loop on one device, per setting:
mixed precision off / bf16 / fp16, channels-last, DataLoader workers. Writes
``train-throughput-<machine>.{json,md}`` under ``--out``.

    python benchmarks/train_throughput.py --device cpu --model resnet20_cifar --size 32
    python benchmarks/train_throughput.py --device cuda --model resnet50_cifar      # gpu_suite.sh
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pbkit.core import device as devices  # noqa: E402
from pbkit.core.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from pbkit.data import datasets  # noqa: E402
from pbkit.machine import envinfo  # noqa: E402
from pbkit.models import sources  # noqa: E402
from pbkit.tasks import get as get_task  # noqa: E402
from pbkit.train.recipe import Recipe, TrainRequest  # noqa: E402

RECIPE = {
    "epochs": 1,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "schedule": "constant",
    "milestones": [],
    "step_size": 30,
    "gamma": 0.1,
    "batch_size": 128,
    "label_smoothing": 0.0,
    "seed": 0,
    "weight_decay": 5e-4,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="resnet50_cifar")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=2048, help="synthetic training images per epoch")
    ap.add_argument(
        "--epochs", type=int, default=2, help="the first epoch warms up; the last is reported"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    dev = devices.resolve(args.device)
    amps = ["off", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    settings = [{"amp": a, "channels_last": False, "workers": 0} for a in amps]
    settings += [{"amp": "off", "channels_last": True, "workers": 0}]
    settings += [{"amp": "off", "channels_last": False, "workers": w} for w in args.workers if w]
    task = get_task("classify")
    rows = []
    for s in settings:
        bundle = datasets.load("synthetic", image_size=args.size, num_classes=100, train_limit=None)
        bundle.train = torch.utils.data.TensorDataset(
            *[
                t.repeat(args.images // len(t) + 1, *[1] * (t.dim() - 1))[: args.images]
                for t in bundle.train.tensors
            ]
        )  # type: ignore[union-attr]
        bundle.workers, bundle.pin_memory = s["workers"], dev.type == "cuda"
        spec = sources.resolve(args.model, num_classes=100, input_size=args.size)
        model = sources.build(spec).to(dev)
        t0 = time.perf_counter()
        recipe = Recipe.from_dict(
            {**RECIPE, "epochs": args.epochs, "amp": s["amp"], "channels_last": s["channels_last"]}
        )
        request = TrainRequest(recipe, eval_batch_size=256, evaluate_each_epoch=False)
        hist = task.train(model, bundle, spec, request)
        ips = hist["history"][-1]["images_per_s"]
        rows.append(
            {**s, "images_per_s": round(ips, 1), "wall_s": round(time.perf_counter() - t0, 2)}
        )
        print(f"{args.model} {s}: {ips:.1f} img/s", flush=True)
    machine = envinfo.machine(envinfo.collect())
    tag = f"{args.model}-{dev.type}-{machine.replace(' ', '-')}"
    doc = {
        "model": args.model,
        "input_size": args.size,
        "device": devices.name(dev),
        "machine": machine,
        "batch_size": RECIPE["batch_size"],
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"train-throughput-{tag}.json", doc)
    base = rows[0]["images_per_s"] or 1.0
    md = [
        (
            f"# Training throughput: {args.model} at {args.size}px, batch {RECIPE['batch_size']},"
            f" on {doc['device']} ({machine}, {doc['threads']} torch threads)"
        ),
        "",
        (
            f"Images per second of the last of {args.epochs} epochs of pbkit's training loop"
            " (synthetic data)."
        ),
        "",
        "| amp | channels_last | workers | images/s | vs the first row |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['amp']} | {r['channels_last']} | {r['workers']} | {r['images_per_s']:.1f} | "
        f"{r['images_per_s'] / base:.2f}x |"
        for r in rows
    ]
    atomic_write_text(args.out / f"train-throughput-{tag}.md", "\n".join(md) + "\n")
    print(f"wrote {args.out}/train-throughput-{tag}.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
