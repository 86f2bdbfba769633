"""Training-type stages across processes: DistributedDataParallel launched by torchrun.

With ``distributed.nproc_per_node`` (or ``nnodes``) above one, base training and finetuning do not
train in the run's own process. :func:`train` writes a job (the model as it is now, the recipe,
the configuration, where the distillation teacher's file is) to a private folder and starts
``python -m torch.distributed.run ... -m pbkit.stages.distributed JOB``; every rank then

- receives the job from the rank that holds it (:func:`_receive`; with several machines, those
  that joined with ``pbkit join`` hold nothing and need no shared storage),
- builds the dataset from the configuration, and trains its shard of every epoch with the task's
  own loop (``Task.train(dist=...)``), the recipe's ``batch_size`` being the global batch,
- and the rank holding the job reports each epoch (a ``@pbkit-epoch`` line that this process turns
  into its progress) and writes the trained model and its history into the job folder.

Pruning happens once, in the run's process, before; the trained model comes back here, and the
stage writes its files and record as it does in one process. Any rank failing fails the job:
torchrun stops the others, and :func:`train` raises one line naming the rank and the cause;
nothing of the run's folder has been touched by then.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbkit.core import config, device
from pbkit.core.config import DistributedCfg, KDCfg
from pbkit.core.errors import PbkitError
from pbkit.data import DataBundle
from pbkit.models import ModelSpec, checkpoint
from pbkit.tasks import Task
from pbkit.train.recipe import Recipe, TrainRequest

EPOCH, ERROR = "@pbkit-epoch ", "@pbkit-error "
WORKER = "pbkit.stages.distributed"


def across(cfg: config.Config) -> bool:
    """Whether training-type stages train across processes."""
    return cfg.distributed.world_size > 1


def label(cfg: config.Config) -> str:
    """`` across 2 processes`` for a progress title, when training runs across processes."""
    return f" across {cfg.distributed.world_size} processes" if across(cfg) else ""


def train(
    cfg: config.Config,
    task: Task,
    model: nn.Module,
    bundle: DataBundle,
    spec: ModelSpec,
    request: TrainRequest,
    *,
    what: str,
    teacher_file: Path | None = None,
) -> dict[str, Any]:
    """The task's training of ``model`` (in place) as ``request`` asks: in this process, or across
    ``cfg.distributed``'s processes (the teacher then comes from ``teacher_file``). Returns the
    recipe as run with its history, and across processes ``distributed`` (how it ran)."""
    if not across(cfg):
        return task.train(model, bundle, spec, request)
    return _train_across(cfg, task, model, spec, request, what=what, teacher_file=teacher_file)


def _train_across(
    cfg: config.Config,
    task: Task,
    model: nn.Module,
    spec: ModelSpec,
    request: TrainRequest,
    *,
    what: str,
    teacher_file: Path | None,
) -> dict[str, Any]:
    d = cfg.distributed
    recipe, kd = request.recipe, request.kd
    if task.not_distributed:
        raise PbkitError(f"{what} across processes: {task.not_distributed}")
    if recipe.batch_size % d.world_size:
        raise PbkitError(
            f"{what} across {d.world_size} processes: batch_size {recipe.batch_size} is the"
            " global batch and must split evenly among them"
        )
    backend = _backend(cfg)
    home = device.of(model)
    with tempfile.TemporaryDirectory(prefix="pbkit-ddp-") as tmp:
        folder = Path(tmp)
        checkpoint.save_model(model.cpu(), spec, folder / "model.pt")
        job = {
            "config": cfg.model_dump(mode="json"),
            "recipe": recipe.as_record(),
            "kd": kd.model_dump() if kd is not None and kd.enabled else None,
            "teacher": str(teacher_file) if teacher_file is not None else None,
        }
        (folder / "job.json").write_text(json.dumps(job))
        _launch(d, backend, folder, cfg.device, what, request.on_epoch)
        trained, _, extra = checkpoint.load_model(folder / "trained.pt", cfg.model.trust_checkpoint)
        model.load_state_dict(trained.state_dict())
        model.to(home)
        history: dict[str, Any] = extra["training"]
    return history


def _backend(cfg: config.Config) -> str:
    d = cfg.distributed
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if re.fullmatch(r"cuda:\d+", cfg.device) and d.nproc_per_node > 1:
        raise PbkitError(
            f"device {cfg.device} names one GPU, but distributed.nproc_per_node={d.nproc_per_node} "
            "runs one process per GPU; use device=auto or device=cuda"
        )
    if cfg.device == "cuda" and not cuda:
        device.resolve(cfg.device)  # raises its one line
    if cuda and d.nproc_per_node > torch.cuda.device_count():
        raise PbkitError(
            f"distributed.nproc_per_node={d.nproc_per_node} but only {torch.cuda.device_count()}"
            " CUDA device(s) are visible (one process per GPU)"
        )
    backend = d.backend if d.backend != "auto" else ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise PbkitError(
            "distributed.backend=nccl needs CUDA devices; use gloo (or auto) on the CPU"
        )
    return backend


def launch_command(
    d: DistributedCfg, backend: str, job: Path | None, device_name: str
) -> list[str]:
    """torchrun's command line for this machine's share of the job (``job`` None: join one)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={d.nproc_per_node}",
        f"--nnodes={d.nnodes}",
        "--max-restarts=0",
    ]
    if d.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={d.rdzv_endpoint}", "--rdzv-id=pbkit"]
    cmd += [
        "-m",
        WORKER,
        f"--backend={backend}",
        f"--timeout-s={d.timeout_s}",
        f"--device={device_name}",
    ]
    return cmd + ([str(job)] if job is not None else [])


def _launch(
    d: DistributedCfg,
    backend: str,
    folder: Path,
    device_name: str,
    what: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> None:
    cmd = launch_command(d, backend, folder, device_name)
    code, error, tail = run_torchrun(
        cmd, d.nproc_per_node, on_epoch, tmp=folder
    )  # torchrun's files go with the job
    if code != 0 or not (folder / "trained.pt").is_file():
        died = _torchrun_cause(tail)
        # a rank killed by a signal is the cause; the others' errors (a reset connection) follow it
        first = died if died and "(SIG" in died else error or died
        cause = first or (tail[-1] if tail else f"torchrun ended with exit code {code}")
        raise PbkitError(
            f"{what} across {d.world_size} processes failed: {cause}; nothing of it was written"
        )


def run_torchrun(
    cmd: list[str],
    nproc: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    tmp: Path | None = None,
) -> tuple[int, str | None, list[str]]:
    """Run torchrun (its temporary files under ``tmp``); epochs reported go to ``on_epoch``; return
    its exit code, the first rank's one-line error (if a rank said one) and the last lines it
    printed otherwise."""
    threads = max((os.cpu_count() or 1) // nproc, 1)  # this machine's cores shared by its processes
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(threads)}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=False,
    )
    tail: collections.deque[str] = collections.deque(maxlen=60)
    error: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            at = line.find(EPOCH)
            if at >= 0 and on_epoch is not None:
                row = json.loads(line[at + len(EPOCH) :])
                on_epoch(int(row["epoch"]), row)
            elif (at := line.find(ERROR)) >= 0:
                error.append(line[at + len(ERROR) :])
            elif line.strip():
                tail.append(line)
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # interrupted here: torchrun stops its workers
        proc.wait()
        raise
    return proc.wait(), (error[0] if error else None), list(tail)


_SIGNALS = {int(s): s.name for s in signal.Signals}


def _torchrun_cause(tail: list[str]) -> str | None:
    """'rank 1 ended with exit code -9 (SIGKILL)' from torchrun's failure summary, if it printed
    one: a rank killed by a signal where one was, else the first failure listed."""
    text = "\n".join(tail)
    ranks = re.findall(r"rank\s*:\s*(\d+)", text)
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", text)]
    failures = list(zip(ranks, codes, strict=False))
    if not failures:
        return None
    # a rank killed by a signal before one that failed after it (the summary lists either first)
    rank, c = next(((r, c) for r, c in failures if c < 0), failures[0])
    sig = f" ({_SIGNALS.get(-c, 'signal ' + str(-c))})" if c < 0 else ""
    return f"rank {rank} ended with exit code {c}{sig}"


# ------------------------------------------------------------------------------------------ a rank


def _receive(
    job_dir: Path | None, dev: torch.device
) -> tuple[dict[str, Any], dict[str, bytes], int]:
    """The job and its files on every rank, from the lowest rank that holds them; and that rank."""
    import torch.distributed as dist

    holds = torch.tensor([1 if job_dir is not None else 0], device=dev)
    flags = [torch.zeros_like(holds) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, holds)
    source = next((i for i, f in enumerate(flags) if int(f.item())), None)
    if source is None:
        raise PbkitError(
            "no process of this job holds it (every machine joined; start the run with `pbkit run`)"
        )
    payload: list[Any] = [None]
    if dist.get_rank() == source:
        assert job_dir is not None
        job = json.loads((job_dir / "job.json").read_text())
        files = {"model.pt": (job_dir / "model.pt").read_bytes()}
        if job.get("teacher"):  # the distillation teacher's file, wherever it is on this machine
            files["teacher.pt"] = Path(job["teacher"]).read_bytes()
        payload = [(job, files)]
    dist.broadcast_object_list(payload, src=source, device=dev if dev.type == "cuda" else None)
    job, files = payload[0]
    return job, files, source


def _rank_main(job_dir: Path | None, backend: str, timeout_s: float, device_name: str) -> None:
    import torch.distributed as dist

    from pbkit.data import configured
    from pbkit.tasks import get as get_task
    from pbkit.train.distributed import Dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = (
        torch.device("cuda", local)
        if backend == "nccl" or (device_name != "cpu" and torch.cuda.is_available())
        else torch.device("cpu")
    )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        job, files, source = _receive(job_dir, dev)
        d = Dist(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=local,
            device=dev,
            writer=source,
        )
        cfg = config.validate(job["config"], "distributed job")
        with tempfile.TemporaryDirectory(prefix="pbkit-rank-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            trust = cfg.model.trust_checkpoint  # (the files are pbkit's own, written for this job)
            model, spec, _ = checkpoint.load_model(Path(tmp) / "model.pt", trust)
            teacher = None
            if "teacher.pt" in files:
                teacher = checkpoint.load_model(Path(tmp) / "teacher.pt", trust)[0].to(dev).eval()
        model.to(dev)
        bundle = configured(cfg.dataset, cfg.model.num_classes)
        assert bundle is not None
        task = get_task(spec.task)
        kd = KDCfg(**job["kd"]) if job.get("kd") else None
        recipe = Recipe.from_dict(job["recipe"])
        request = TrainRequest(
            recipe,
            eval_batch_size=cfg.dataset.eval_batch_size,
            on_epoch=_report if d.is_writer else None,
            teacher=teacher,
            kd=kd,
            dist=d,
        )
        history = task.train(model, bundle, spec, request)
        history["distributed"] = {
            "world_size": d.world,
            "nnodes": int(os.environ.get("GROUP_WORLD_SIZE", "1")),
            "nproc_per_node": int(os.environ.get("LOCAL_WORLD_SIZE", str(d.world))),
            "backend": backend,
            "global_batch": recipe.batch_size,
            "per_rank_batch": d.local_batch(recipe.batch_size),
            "device": f"{device.name(dev)} x{d.world}",
        }
        if d.is_writer:
            assert job_dir is not None
            checkpoint.save_model(
                model.cpu(), spec, job_dir / "trained.pt", extra={"training": history}
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _report(epoch: int, row: dict[str, float]) -> None:
    print(EPOCH + json.dumps({**row, "epoch": epoch}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """One rank (torchrun starts it): ``[--backend=B] [--timeout-s=S] [--device=D] [JOB_DIR]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {a.split("=", 1)[0][2:]: a.split("=", 1)[1] for a in args if a.startswith("--")}
    rest = [a for a in args if not a.startswith("--")]
    rank = os.environ.get("RANK", "?")
    try:
        _rank_main(
            Path(rest[0]) if rest else None,
            opts.get("backend", "gloo"),
            float(opts.get("timeout-s", 1800)),
            opts.get("device", "auto"),
        )
    except PbkitError as e:
        print(f"{ERROR}rank {rank}: {e}", flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - the launching process shows one line
        print(f"{ERROR}rank {rank}: {type(e).__name__}: {e}", flush=True)
        if os.environ.get("PBKIT_DEBUG"):
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
