"""`pbkit explain` on the kit's two example prunings (resnet18_cifar and yolov8n, l1, protected,
2x): per-layer latency on ort-cpu, ov-cpu and torch-cpu, with the channel-alignment advisor on
the eight slowest pruned layers; each run's record is kept as
``results/reference/explain-<model>-cpu-<n>core/record.json`` (the record only), which
``docs/generate.py`` renders into the docs (docs/explain.md).

    .venv/bin/python benchmarks/explain_examples.py            # both models (a few minutes)
    .venv/bin/python benchmarks/explain_examples.py resnet18_cifar
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet18_cifar": ["--model", "resnet18_cifar"],
    "yolov8n": ["--model", "yolov8n"],
}
PRUNE = ["--method", "l1", "--scope", "protected", "--speedup", "2"]
BACKENDS = ("ort-cpu", "ov-cpu", "torch-cpu")


def pbkit(*args: str) -> str:
    exe = Path(sys.executable).with_name("pbkit")
    print("$ pbkit " + " ".join(args), file=sys.stderr)
    done = subprocess.run([str(exe), *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pbkit {args[0]} exited with {done.returncode}")
    return done.stdout


def main(names: list[str]) -> None:
    tag = f"cpu-{os.cpu_count()}core"
    for name in names or list(MODELS):
        with tempfile.TemporaryDirectory(prefix=f"pbkit-explain-{name}-") as tmp:
            out = json.loads(
                pbkit("prune", *MODELS[name], *PRUNE, "--out", f"{tmp}/runs", "--json")
            )
            run_dir = out["run_dir"]
            for be in BACKENDS:
                pbkit("explain", run_dir, "--backend", be, "--runs", "30", "--align", "8", "--json")
            dest = ROOT / "results" / "reference" / f"explain-{name}-{tag}" / "record.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(run_dir) / "record.json", dest)
            print(f"{name}: {dest.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
