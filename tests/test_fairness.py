"""Fair comparisons (issue #11): setups inferred from records, a refused grid, aggregation over
seeds with "not separable" marks, trainability, the scratch baseline, distillation, the
interleaved schedule, cross-finetuning."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pbkit.core import config, record
from pbkit.core.errors import PbkitError
from pbkit.report import leaderboard, setups

RECIPE = {
    "epochs": 8,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "schedule": "multistep",
    "milestones": [0.5, 0.75],
    "milestones_epochs": [4, 6],
    "step_size": 30,
    "gamma": 0.1,
    "batch_size": 64,
    "label_smoothing": 0.0,
    "seed": 0,
    "weight_decay": 0.0005,
    "kd": {"enabled": False},
    "augmentation": "none",
    "init": "pruned",
    "history": [],
    "trainability": None,
}


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for p in path:
        data = data.setdefault(p, {})
    data[last] = value


def _record(
    src: Path,
    acc: float = 95.0,
    method: str = "l1",
    seed: int = 0,
    base: str = "a" * 64,
    **changes: Any,
) -> record.Record:
    """A hand-made record: the shared pruned run, on digits, finetuned with RECIPE, then ``changes``
    (dotted keys with '__' for '.')."""
    data = json.loads((src / "record.json").read_text())
    data["method"]["key"] = method
    data["dataset"] = {
        "name": "digits",
        "image_size": 16,
        "num_classes": 10,
        "train_size": 1347,
        "test_size": 450,
    }
    data["accuracy"] = {"metric": "top1", "base": 97.0, "pruned": 10.0, "finetuned": acc}
    data["finetune"] = copy.deepcopy(RECIPE)
    data["finetune"]["seed"] = seed
    data["config"]["seed"] = seed
    data["model"]["weights_sha256"] = base
    data["base_training"] = {"epochs": 15}
    data["run_id"] = f"{method}-{seed}-{acc}"
    for key, value in changes.items():
        _put(data, key.replace("__", "."), value)
    return record.validate(data)


def test_setup_inference_names_each_level_and_what_breaks_the_next(pruned_run: Path) -> None:
    a = setups.from_record(_record(pruned_run))

    def pair(**changes: Any) -> tuple[str | None, str | None]:
        return setups.infer([a, setups.from_record(_record(pruned_run, **changes))])

    assert pair() == ("S4.2", None)
    assert pair(method__target_speedup=3.0)[0] is None  # another target: no setup at all
    assert pair(model__name="resnet56_cifar")[0] is None
    assert pair(dataset__name="cifar10")[0] is None
    assert pair(base="b" * 64) == ("S1", "base model (aaaaaaaaaaaa | bbbbbbbbbbbb)")
    assert pair(finetune__epochs=12) == ("S2", "finetune epochs (8 | 12)")
    assert pair(finetune__lr=0.001) == ("S3.1", "finetune LR schedule (lr: 0.01 | 0.001)")
    assert (
        pair(finetune__milestones_epochs=[5, 7])[1]
        == "finetune LR schedule (milestones: [4, 6] | [5, 7])"
    )
    kd = pair(finetune__kd={"enabled": True, "alpha": 0.5, "temperature": 4.0, "teacher": None})
    assert (
        kd[0] == "S3.1" and kd[1] is not None and kd[1].startswith("finetune recipe (kd.")
    )  # KD is recipe
    assert pair(finetune__weight_decay=0.0)[1] == "finetune recipe (weight_decay: 0.0005 | 0.0)"
    assert pair(finetune__augmentation="RandomCrop")[0] == "S3.1"
    sparse = {"epochs": 3, "lr": 0.01, "schedule": "cosine", "optimizer": "sgd"}
    slim = setups.from_record(
        _record(pruned_run, method="slim", method__stage="sparsify", method__sparsify=sparse)
    )
    assert setups.infer([a, slim]) == ("S3.2", "pruning-stage epochs (0 | 3)")
    slim2 = setups.from_record(
        _record(
            pruned_run,
            method="group_slim",
            method__stage="sparsify",
            method__sparsify={**sparse, "lr": 0.1},
        )
    )
    assert setups.infer([slim, slim2]) == (
        "S4.1",
        "pruning-stage schedule (sparsify.lr: 0.01 | 0.1)",
    )
    # scratch against pruned: SX-A when the total epochs agree (15 base + 0 pruning + 8 finetune)
    scratch = _record(
        pruned_run, finetune__init="scratch", finetune__epochs_total=23, finetune__epochs=23
    )
    assert setups.infer([a, setups.from_record(scratch)]) == ("SX-A", None)
    short = _record(
        pruned_run, finetune__init="scratch", finetune__epochs_total=20, finetune__epochs=20
    )
    assert setups.infer([a, setups.from_record(short)])[0] is None


def test_rows_apart_in_what_s32_holds_are_never_ranked_together_and_the_report_says_why(
    pruned_run: Path, tmp_path: Path
) -> None:
    recs = [
        _record(pruned_run, 96.0, "l1"),
        _record(pruned_run, 94.0, "fpgm"),
        _record(pruned_run, 97.5, "lamp", finetune__lr=0.1),
    ]
    board = leaderboard.leaderboard(leaderboard.rows((tmp_path / r.run_id, r) for r in recs))
    assert [[e.method for e in g] for _, g in board] == [["l1", "fpgm"], ["lamp"]] or sorted(
        [[e.method for e in g] for _, g in board]
    ) == [["l1", "fpgm"], ["lamp"]]
    for info, _ in board:
        assert (
            info.setup == "S4.2"
            and info.split_by == ["finetune LR schedule (lr: 0.01 | 0.1)"]
            or info.split_by == ["finetune LR schedule (lr: 0.1 | 0.01)"]
        )
    md = leaderboard.markdown(leaderboard.rows((tmp_path / r.run_id, r) for r in recs))
    assert (
        "Setup **S4.2**" in md
        and "Kept apart from the other groups of this comparison by: finetune LR" in md
    )
    assert "lr 0.01 multistep @4,6 x0.1" in md and "KD off" in md and "augmentation none" in md


def test_seeds_aggregate_to_mean_std_n_and_overlapping_neighbours_share_a_rank(
    pruned_run: Path, tmp_path: Path
) -> None:
    recs = [
        _record(pruned_run, acc, m, seed=s, base=f"{s}" * 64)
        for m, accs in {
            "l1": (96.0, 97.0, 98.0),
            "fpgm": (95.0, 96.0, 97.5),
            "lamp": (90.0, 90.5, 91.0),
        }.items()
        for s, acc in enumerate(accs)
    ]
    rs = leaderboard.rows((tmp_path / r.run_id, r) for r in recs)
    board = leaderboard.leaderboard(rs)
    assert len(board) == 1  # the seeds' bases differ per seed, the same for every method: one group
    info, g = board[0]
    assert [e.method for e in g] == ["l1", "fpgm", "lamp"]
    l1 = g[0]
    assert (
        l1.n == 3
        and l1.finetuned == pytest.approx(97.0)
        and l1.std["finetuned"] == pytest.approx(1.0)
    )
    assert l1.seeds == [0, 1, 2] and len(l1.runs) == 3
    assert [e.rank_label for e in g] == [
        "1",
        "=1",
        "3",
    ]  # fpgm 96.17 +- 1.26 overlaps l1 97 +- 1
    assert [e.separable_from_above for e in g] == [True, False, True]
    assert info.seeds == ["0", "1", "2"]
    md = leaderboard.markdown(rs)
    assert "| 1 | l1 | 3 |" in md and "| =1 | fpgm | 3 |" in md and "97.00 ± 1.00" in md
    rows_csv = leaderboard.render(rs, "csv")
    assert isinstance(rows_csv, str)
    # (a cell that begins with = is a formula in a spreadsheet: it gets a leading ')
    assert "finetuned_std" in rows_csv.splitlines()[0] and ",'=1,fpgm,3," in rows_csv


def test_trainability_is_the_mean_over_the_first_lr_stage_and_flags_an_early_decay() -> None:
    from pbkit.train.loop import trainability

    hist = [
        {"epoch": e, "lr_used": lr, "accuracy": acc}
        for e, (lr, acc) in enumerate(
            [(0.1, 50.0), (0.1, 60.0), (0.1, 70.0), (0.01, 80.0), (0.01, 81.0), (0.001, 81.5)], 1
        )
    ]
    ta = trainability(hist, "accuracy", "multistep")
    assert ta == {
        "ta": 60.0,
        "metric": "accuracy",
        "stage_epochs": 3,
        "staged": True,
        "rising_at_first_decay": True,
    }
    flat = [{**r, "accuracy": 70.0 if r["epoch"] <= 3 else r["accuracy"]} for r in hist]
    assert trainability(flat, "accuracy", "multistep")["rising_at_first_decay"] is False
    cosine = trainability(hist, "accuracy", "cosine")  # no LR stages: every epoch
    assert cosine is not None and cosine["ta"] == pytest.approx(
        sum(r["accuracy"] for r in hist) / 6
    )
    assert cosine["rising_at_first_decay"] is None
    assert trainability([{"epoch": 1, "loss": 1.0}], "accuracy", "multistep") is None


def test_kd_loss_is_hintons_formula_and_its_gradient_reaches_only_the_student() -> None:
    from pbkit.core.config import KDCfg
    from pbkit.tasks.classify import distilled, kd_loss

    torch.manual_seed(0)
    s, t, temp = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True), 3.0
    p_t = F.softmax(t / temp, dim=1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temp, dim=1))).sum(1).mean() * temp**2
    value = kd_loss(s, t, temp)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    assert kd_loss(t.detach(), t.detach(), temp).item() == pytest.approx(0.0, abs=1e-6)

    student, teacher = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))

    def task_loss(m: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = m(batch[0])
        return F.cross_entropy(out, batch[1]), out

    kd = KDCfg(enabled=True, alpha=0.25, temperature=2.0, teacher=None)
    loss = distilled(task_loss, teacher, kd)(student, (x, y))
    want = 0.75 * F.cross_entropy(student(x), y) + 0.25 * kd_loss(student(x), teacher(x), 2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    off = distilled(task_loss, teacher, kd.model_copy(update={"enabled": False}))(student, (x, y))
    assert off.item() == pytest.approx(F.cross_entropy(student(x), y).item(), rel=1e-6)


def test_detection_kd_loss_is_zero_for_the_teacher_itself_and_reaches_only_the_student() -> None:
    from pbkit.tasks.detect import detection_kd_loss

    torch.manual_seed(0)
    b, reg_max, nc, a = 2, 16, 5, 7
    t = {"boxes": torch.randn(b, 4 * reg_max, a), "scores": torch.randn(b, nc, a)}
    s = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    assert detection_kd_loss(s, t, reg_max, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    s = {k: (v + torch.randn_like(v)).requires_grad_(True) for k, v in t.items()}
    tt = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    loss = detection_kd_loss(s, tt, reg_max, 2.0)
    assert loss.item() > 0
    loss.backward()
    assert all(v.grad is not None for v in s.values()) and all(v.grad is None for v in tt.values())


def test_reinitialize_keeps_the_architecture_and_draws_every_weight_afresh() -> None:
    from pbkit.models import build, counts, resolve
    from pbkit.models.weights import reinitialize

    model = build(resolve("resnet20_cifar", num_classes=10, input_size=16), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(3.0)
    widths = counts.layer_widths(model)
    reinitialize(model, seed=1)
    assert counts.layer_widths(model) == widths
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.dtype.is_floating_point
        and v.numel() > 1
        and "running" not in k
        and "bn" not in k
        and not torch.equal(v, before[k])
    ]
    weights = [k for k, v in before.items() if k.endswith("weight") and v.dim() > 1]
    assert set(weights) <= set(changed)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    again = copy.deepcopy(model)
    reinitialize(again, seed=1)
    reinitialize(model, seed=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


SMALL = [
    "model.name=resnet20_cifar",
    "model.input_size=16",
    "prune.method=l1",
    "prune.speedup=2",
    "prune.iterative_steps=40",
    "dataset.name=synthetic",
    "dataset.image_size=16",
    "dataset.train_limit=96",
    "dataset.test_limit=32",
    "base.epochs=1",
    "base.batch_size=32",
    "finetune.epochs=1",
    "finetune.batch_size=32",
    "bench.quick=true",
    "bench.backends=[torch-cpu]",
    "export.exporter=torchscript",
]


def test_scratch_runs_train_the_pruned_architecture_for_base_plus_finetune_epochs(
    tmp_path: Path,
) -> None:
    from pbkit import stages
    from pbkit.models import checkpoint, counts

    cfg = config.load(None, [*SMALL, f"out={tmp_path}", "init=scratch", "finetune.epochs=2"])
    out = stages.run(cfg, until="finetune", quiet=True)
    ft = out.record.finetune or {}
    assert ft["init"] == "scratch" and ft["epochs_total"] == 3 and ft["epochs_from"]["base"] == 1
    assert (
        ft["epochs"] == 3 and ft["lr"] == cfg.base.lr and len(ft["history"]) == 3
    )  # the base recipe
    scratch, _, _ = checkpoint.load_model(out.run_dir / "finetuned.pt")
    pruned, _, _ = checkpoint.load_model(out.run_dir / "pruned.pt")
    assert counts.layer_widths(scratch) == counts.layer_widths(pruned)  # small-dense, never masked
    pruned_run = stages.run(
        config.load(None, [*SMALL, f"out={tmp_path}", "finetune.epochs=2"]),
        until="finetune",
        quiet=True,
    )
    assert pruned_run.run_dir != out.run_dir  # init is part of the run's identity
    assert out.record.identity is not None and out.record.identity.fields["init"] == "scratch"
    # a scratch run needs to know how long the base trained
    with pytest.raises(PbkitError, match="init: scratch trains for as many epochs as the base"):
        stages.run(
            config.load(None, [*SMALL, f"out={tmp_path}", "init=scratch", "base.epochs=0"]),
            until="finetune",
            quiet=True,
        )


def test_interleaved_schedule_reaches_the_target_training_between_steps_with_kd(
    tmp_path: Path,
) -> None:
    from pbkit import stages

    cfg = config.load(
        None,
        [
            *SMALL,
            f"out={tmp_path}",
            "prune.schedule=interleaved",
            "prune.interleave_iters=2",
            "finetune.kd.enabled=true",
        ],
    )
    rec = stages.run(cfg, until="finetune", quiet=True).record
    m = rec.method
    assert m.schedule == "interleaved" and m.achieved_speedup >= 2.0
    assert m.interleave is not None and m.interleave["steps_trained"] == m.steps
    assert m.interleave["iterations"] == 2 * m.steps and m.interleave["kd"]["enabled"] is True
    assert m.interleave["epochs"] == -(
        -m.interleave["iterations"] // 3
    )  # 96 images in batches of 32
    assert (rec.finetune or {})["kd"][
        "enabled"
    ] is True and rec.schema_version == record.SCHEMA_VERSION
    oneshot = stages.run(
        config.load(None, [*SMALL, f"out={tmp_path}", "finetune.kd.enabled=true"]),
        until="prune",
        quiet=True,
    ).record
    assert oneshot.method.schedule == "oneshot" and oneshot.method.interleave is None
    assert oneshot.run_id != rec.run_id


def test_kd_is_part_of_the_identity_only_when_on(tmp_path: Path) -> None:
    from pbkit.stages import rundir

    def run_id(*sets: str) -> str:
        return rundir.plan(config.load(None, [*SMALL, f"out={tmp_path}", *sets])).run_id

    assert run_id() == run_id("finetune.kd.alpha=0.9")  # KD off: its settings change nothing
    assert run_id() != run_id("finetune.kd.enabled=true")
    assert run_id("finetune.kd.enabled=true") != run_id(
        "finetune.kd.enabled=true", "finetune.kd.alpha=0.9"
    )
    # a scratch run trains with the base recipe: of the finetuning recipe only its epochs count
    assert run_id("init=scratch") == run_id(
        "init=scratch", "finetune.lr=0.5", "finetune.kd.enabled=true"
    )
    assert (
        run_id("init=scratch")
        != run_id("init=scratch", "finetune.epochs=3")
        != run_id("finetune.epochs=3")
    )
    with pytest.raises(PbkitError, match="finetune.kd.teacher 'nope.pt' not found"):
        run_id("finetune.kd.enabled=true", "finetune.kd.teacher=nope.pt")


STUDY = """
name: fair
config:
  model: {{name: resnet20_cifar, input_size: 16}}
  dataset: {{name: synthetic}}
  finetune: {{epochs: 2}}
min_setup: {level}
grid:
  prune.method: [l1, fpgm, slim]
  finetune: [{{lr: 0.01}}, {{lr: 0.001, kd: {{enabled: true}}}}]
{exclude}
"""


def test_a_study_refuses_a_grid_whose_methods_never_meet_at_its_min_setup(tmp_path: Path) -> None:
    from pbkit.study import spec

    def read(level: str, exclude: str = "") -> spec.Study:
        path = tmp_path / "fair.study.yaml"
        path.write_text(STUDY.format(level=level, exclude=exclude))
        return spec.read(path)

    study = read("S3.2")  # every method under both recipes: they meet
    assert len(study.trials) == 6
    lrs = {
        (t.params["prune.method"], t.cfg.finetune.lr, t.cfg.finetune.kd.enabled)
        for t in study.trials
    }
    assert ("l1", 0.001, True) in lrs and (
        "l1",
        0.01,
        False,
    ) in lrs  # a mapping merges into its section
    assert study.trials[0].cfg.finetune.epochs == 2
    split = (
        "exclude:\n  - {prune.method: l1, finetune: {lr: 0.001, kd: {enabled: true}}}\n"
        "  - {prune.method: fpgm, finetune: {lr: 0.01}}\n"
    )
    with pytest.raises(
        PbkitError,
        match=r"min_setup S3.2 cannot be met: fpgm and l1 .* at best S3.1; they differ in "
        r"finetune LR schedule \(lr: 0.001 \| 0.01\)",
    ):
        read("S3.2", split)
    assert len(read("S3.1", split).trials) == 4  # the same epochs: S3.1 holds
    with pytest.raises(
        PbkitError, match=r"min_setup S4.1 cannot be met: .*slim.* pruning-stage epochs"
    ):
        read("S4.1")
    with pytest.raises(PbkitError, match="unknown comparison setup 'S9'"):
        read("S9")


def test_cross_finetuning_says_whether_the_order_holds_under_every_recipe(
    pruned_run: Path, tmp_path: Path
) -> None:
    accs = {
        ("A", 0.01): 97.0,
        ("B", 0.01): 94.0,
        ("C", 0.01): 90.0,
        ("A", 0.001): 92.0,
        ("B", 0.001): 95.0,
        ("C", 0.001): 89.0,
    }
    recs = [_record(pruned_run, acc, m, finetune__lr=lr) for (m, lr), acc in accs.items()]
    recs += [
        _record(
            pruned_run,
            acc - 1,
            m,
            finetune__lr=0.01,
            finetune__kd={"enabled": True, "alpha": 0.5, "temperature": 4.0, "teacher": None},
        )
        for (m, lr), acc in accs.items()
        if lr == 0.01
    ]
    recs.append(
        _record(
            pruned_run,
            93.0,
            "A",
            finetune__init="scratch",
            finetune__epochs=23,
            finetune__epochs_total=23,
        )
    )
    board = leaderboard.leaderboard(leaderboard.rows((tmp_path / r.run_id, r) for r in recs))
    labels = sorted(info.recipe_label for info, _ in board)
    assert labels == ["lr=0.001 & kd off", "lr=0.01 & kd off", "lr=0.01 & kd on", "scratch"]
    [cross] = leaderboard.cross_finetuning(board)
    assert cross.setup == "S3.1" and cross.top[:2] == ["A", "B"]
    verdict = next(v for v in cross.verdicts if {v.a, v.b} == {"A", "B"})
    assert not verdict.holds and verdict.verdict.startswith(
        "the order flips: A wins with lr=0.01 & kd off"
    )
    a_c = next(v for v in cross.verdicts if {v.a, v.b} == {"A", "C"})
    assert a_c.holds and a_c.verdict.startswith("A beats C under every recipe")
    effects = {(x.from_recipe, x.to_recipe): x for x in leaderboard.recipe_effects(board)}
    kd = effects[("lr=0.01 & kd off", "lr=0.01 & kd on")]
    assert kd.field == "kd" and kd.mean_change == pytest.approx(-1.0)
    lr = effects[("lr=0.001 & kd off", "lr=0.01 & kd off")]  # read as: what the larger LR gave
    assert lr.field == "lr" and {p.method: p.change for p in lr.per_method} == {
        "A": 5.0,
        "B": -1.0,
        "C": 1.0,
    }
    [scratch] = leaderboard.scratch_rows(board)
    assert scratch.method == "A" and scratch.epochs == 23
    assert scratch.pruned["lr=0.01 & kd off"].setup == "SX-A"
    assert scratch.pruned["lr=0.01 & kd off"].gap == pytest.approx(4.0)
    md = leaderboard.markdown(leaderboard.rows((tmp_path / r.run_id, r) for r in recs))
    for needle in (
        "### Cross-finetuning",
        "the order flips",
        "### What one recipe change did",
        "### Scratch baseline",
        "**SX-A**",
    ):
        assert needle in md


def test_report_cli_writes_the_accuracy_plot(pruned_run: Path, tmp_path: Path, pbkit: Any) -> None:
    for s, acc in enumerate((96.0, 97.0)):
        r = _record(pruned_run, acc, seed=s)
        d = tmp_path / "recs" / r.run_id
        shutil.copytree(pruned_run, d)
        record.write(d, r)
    res = pbkit(
        "report", tmp_path / "recs", "--format", "md", "--accuracy-plot", tmp_path / "acc.png"
    )
    assert res.code == 0, res.err
    assert "| 1 | l1 | 2 |" in res.out and "96.50 ± 0.71" in res.out
    png = tmp_path / "acc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.slow
def test_yolo_finetunes_with_distillation_inside_the_ultralytics_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit import models, tasks
    from pbkit.core.config import KDCfg
    from pbkit.data.detection import detection
    from pbkit.tasks import detect
    from tests.detection_data import make

    calls = []
    real = detect.detection_kd_loss
    monkeypatch.setattr(
        detect, "detection_kd_loss", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    bundle = detection(str(make(tmp_path / "shapes")), image_size=128)
    spec = models.resolve("yolov8n", input_size=128, num_classes=2)
    model, teacher = models.build(spec, seed=0), models.build(spec, seed=1)
    recipe = {
        "epochs": 1,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": False,
        "schedule": "constant",
        "milestones": [],
        "step_size": 1,
        "gamma": 0.1,
        "batch_size": 8,
        "label_smoothing": 0.0,
        "seed": 0,
    }
    kd = KDCfg(enabled=True, alpha=0.5, temperature=2.0, teacher=None)
    from pbkit.train.recipe import Recipe, TrainRequest

    request = TrainRequest(Recipe.from_dict(recipe), eval_batch_size=8, teacher=teacher, kd=kd)
    out = tasks.get("detect").train(model, bundle, spec, request)
    assert calls and len(out["history"]) == 1  # the trainer's loss went through the distillation
    assert getattr(model, "criterion", None) is None or not isinstance(
        model.criterion, detect.DistilledCriterion
    )
    assert all(not p.requires_grad for p in teacher.parameters())


def test_a_seed_axis_trains_a_base_per_seed_unless_the_study_shares_one(tmp_path: Path) -> None:
    from pbkit.study import spec

    text = (
        "name: seeds\nconfig: {{model: {{name: resnet20_cifar, input_size: 16{m}}}, dataset:"
        " {{name: synthetic}}, base: {{epochs: 2{b}}}}}\ngrid:\n  seed: [0, 1, 2]\n"
    )
    path = tmp_path / "s.study.yaml"
    path.write_text(text.format(m="", b=""))
    per_seed = spec.read(path).trials
    assert len({t.base_key for t in per_seed}) == 3 and [t.cfg.finetune.seed for t in per_seed] == [
        0,
        1,
        2,
    ]
    path.write_text(text.format(m=", seed: 0", b=", seed: 0"))
    shared = spec.read(path).trials
    assert len({t.base_key for t in shared}) == 1 and [t.cfg.prune.seed for t in shared] == [
        0,
        1,
        2,
    ]
