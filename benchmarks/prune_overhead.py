"""Pruning-loop overhead: the wall time of the whole pruning loop (steps, MAC counting after every
step, checks, bookkeeping) against the sum of the pruner's own step times, with MACs counted for
real after every step (the counter before) and from the layers' shapes
(pbkit.models.counts.StepCounter). Goal: loop / steps <= 1.10x. Writes
``prune-overhead-<tag>.{json,md}`` under ``--out``.

    python benchmarks/prune_overhead.py     # resnet18_cifar, tv:densenet121, a timm ViT
    python benchmarks/prune_overhead.py --models resnet18_cifar@32 --speedup 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pbkit.core.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from pbkit.machine import envinfo  # noqa: E402
from pbkit.models import counts, sources  # noqa: E402
from pbkit.pruning import methods  # noqa: E402
from pbkit.pruning.loop import PruneHooks, PruneSettings, prune_to_target  # noqa: E402
from pbkit.tasks import get as get_task  # noqa: E402

MODELS = ["resnet18_cifar@32", "tv:densenet121@224", "timm:vit_tiny_patch16_224@224"]


def one(name: str, size: int, counter: str, speedup: float, method: str) -> dict[str, Any]:
    spec = sources.resolve(name, input_size=size)
    model = sources.build(spec, seed=0)
    real = counts.StepCounter.after_step
    if counter == "real":  # the counter before: a real forward pass after every step
        counts.StepCounter.after_step = lambda self, reached: (self.exact(), True)  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        res = prune_to_target(
            model,
            methods.get(method),
            PruneSettings(speedup=speedup),
            input_size=size,
            num_classes=spec.num_classes,
            protected=get_task(spec.task).protected(model, spec),
            hooks=PruneHooks(name=spec.name),
        )
        wall = time.perf_counter() - t0
    finally:
        counts.StepCounter.after_step = real  # type: ignore[method-assign]
    steps_s = res.step_time_s * res.steps
    return {
        "model": name,
        "input_size": size,
        "counter": counter,
        "real_counts": res.real_counts,
        "steps": res.steps,
        "achieved": round(res.achieved_speedup, 3),
        "loop_s": round(res.loop_time_s, 3),
        "steps_s": round(steps_s, 3),
        "ratio": round(res.loop_time_s / steps_s, 3),
        "prune_total_s": round(wall, 2),
        "macs_pruned": res.macs_pruned,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="name@input_size")
    ap.add_argument("--speedup", type=float, default=2.0)
    ap.add_argument("--method", default="l2")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    rows = []
    for item in args.models:
        name, size = item.rsplit("@", 1)
        for counter in ("real", "shapes"):
            row = one(name, int(size), counter, args.speedup, args.method)
            rows.append(row)
            print(
                f"{name}@{size} counter={row['counter']}: {row['steps']} steps"
                f" ({row['real_counts']} counted for real), loop {row['loop_s']:.2f} s, steps"
                f" {row['steps_s']:.2f} s, ratio {row['ratio']:.2f}x",
                flush=True,
            )
    machine = envinfo.machine(envinfo.collect())
    tag = args.tag or f"cpu-{torch.get_num_threads()}thread-{machine.replace(' ', '-')}"
    doc = {
        "machine": machine,
        "threads": torch.get_num_threads(),
        "method": args.method,
        "speedup": args.speedup,
        "scope": "protected",
        "goal_ratio": 1.10,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"prune-overhead-{tag}.json", doc)
    same = all(
        a["macs_pruned"] == b["macs_pruned"] and a["steps"] == b["steps"]
        for a, b in zip(rows[::2], rows[1::2], strict=True)
    )
    md = [
        (
            f"# Pruning-loop overhead ({args.method}, protected, {args.speedup}x; {machine}, "
            f"{doc['threads']} torch threads)"
        ),
        "",
        (
            "The pruning loop's wall time (steps, MAC counting after every step, checks) against"
            " the sum of the pruner's own step times. `real`: MACs counted by a forward pass after"
            " every step (before); `shapes`: the convolution and linear layers' MACs from their"
            " weights' shapes, a real count only where the target may be met"
            " (pbkit.models.counts.StepCounter). Goal: <= 1.10x."
        ),
        "",
        f"Same steps and the same MACs with either counter: {'yes' if same else 'NO'}.",
        "",
        (
            "| model | px | counter | steps | real counts | achieved | loop s | steps s | loop /"
            " steps |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['model']} | {r['input_size']} | {r['counter']} | {r['steps']} | {r['real_counts']} |"
        f" {r['achieved']:.3f}x | {r['loop_s']:.2f} | {r['steps_s']:.2f} | {r['ratio']:.2f}x |"
        for r in rows
    ]
    atomic_write_text(args.out / f"prune-overhead-{tag}.md", "\n".join(md) + "\n")
    print(f"wrote {args.out}/prune-overhead-{tag}.{{json,md}}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
