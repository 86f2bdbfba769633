"""The CLI contract: verbs, --json, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import QUICK

COMMANDS = ["list", "env", "prune", "export", "bench", "run", "report", "schema", "study"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example(pbkit, cmd: str) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(cmd, "--help")
    assert r.code == 0 and "Example" in r.out


@pytest.mark.parametrize(
    "what,key,must",
    [
        ("models", "models", "resnet18_cifar"),
        ("methods", "methods", "fpgm"),
        ("backends", "backends", "ort-cpu"),
        ("datasets", "datasets", "digits"),
    ],
)
def test_list_json_names_everything(pbkit, what: str, key: str, must: str) -> None:  # type: ignore[no-untyped-def]
    r = pbkit("list", what, "--json")
    assert r.code == 0
    names = [row.get("key", row.get("name")) for row in r.json()[key]]
    assert must in names


def test_list_models_json_includes_prefixed_families(pbkit) -> None:  # type: ignore[no-untyped-def]
    data = pbkit("list", "models", "--json").json()
    assert "resnet50" in data["prefixes"]["tv:"]["names"]
    assert "vit_small_patch16_224" in data["prefixes"]["timm:"]["names"]


@pytest.fixture
def known_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """One family listed as known not to prune (the list is the zoo's findings; it may be empty)."""
    import re

    from pbkit import models
    from pbkit.models import registry

    entries = [
        (re.compile(r"^tv:shufflenet_v2_"), "tv:shufflenet_v2_x1_0", "a reason a user can act on"),
        (re.compile(r"^timm:gcvit_tiny$"), "timm:gcvit_tiny", "another reason"),
    ]
    monkeypatch.setattr(registry, "KNOWN_FAILURES", entries)
    monkeypatch.setattr(models, "KNOWN_FAILURES", entries)


def test_list_models_marks_the_names_known_not_to_prune_with_the_reason(
    pbkit, known_failure
) -> None:  # type: ignore[no-untyped-def]
    known = pbkit("list", "models", "--json").json()["prefixes"]["tv:"]["known_not_to_prune"]
    assert (
        known["tv:shufflenet_v2_x0_5"]
        == "a reason a user can act on (tried: tv:shufflenet_v2_x1_0)"
    )
    assert known["tv:shufflenet_v2_x1_0"] == "a reason a user can act on"
    assert "tv:resnet50" not in known and "tv:maxvit_t" not in known
    table = pbkit("list", "models").out
    assert "known not to prune here" in table and "tv:shufflenet_v2_x0_5" in table
    assert pbkit("list", "models", "--json").json()["prefixes"]["timm:"]["known_not_to_prune"] == {
        "timm:gcvit_tiny": "another reason"
    }  # the timm names the zoo tried and saw fail
    assert "timm:gcvit_tiny" in table


def test_no_torchvision_classifier_is_listed_as_known_not_to_prune_that_the_zoo_saw_pass(
    pbkit,
) -> None:  # type: ignore[no-untyped-def]
    known = pbkit("list", "models", "--json").json()["prefixes"]["tv:"]["known_not_to_prune"]
    for name in (
        "tv:resnet50",
        "tv:vit_b_16",
        "tv:swin_t",
        "tv:swin_v2_b",
        "tv:maxvit_t",
        "tv:shufflenet_v2_x0_5",
        "tv:inception_v3",
    ):
        assert name not in known  # they prune (the zoo, tests/test_swin.py, tests/test_tv_archs.py)


def test_the_zoos_committed_failures_are_the_names_listed_as_known_not_to_prune() -> None:
    from pbkit import models

    tables = (
        "zoo-tv-cpu-2core.json",
        "zoo-timm-sample-cpu-2core.json",
    )  # (the others are earlier passes)
    perf = Path(__file__).parents[1] / "results" / "perf"
    rows = [r for t in tables for r in json.loads((perf / t).read_text())["rows"]]
    failed = {r["model"] for r in rows if r["status"] == "fail"}
    assert len(rows) >= 100 and failed
    assert (
        sorted(n for n in failed if models.known_failure(n) is None) == []
    )  # each says why before it tries
    assert {
        tried for _, tried, _ in models.KNOWN_FAILURES
    } <= failed  # each listed one was seen failing
    assert (
        sorted(
            r["model"] for r in rows if r["status"] == "pass" and models.known_failure(r["model"])
        )
        == []
    )


def test_a_model_known_not_to_prune_says_so_first_then_tries(
    pbkit, known_failure, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(
        "prune",
        "--model",
        "tv:shufflenet_v2_x0_5",
        "--method",
        "l2",
        "--speedup",
        "1.5",
        "--out",
        tmp_path / "runs",
        "--set",
        "model.input_size=64",
    )
    assert (
        "note: tv:shufflenet_v2_x0_5 is known not to prune here: a reason a user can act on"
        in r.err
    )
    assert r.code == 0 and any(
        (tmp_path / "runs").glob("tv-shufflenet*/pruned.pt")
    )  # (it prunes now)


def test_list_methods_says_stage_data_and_families(pbkit) -> None:  # type: ignore[no-untyped-def]
    rows = {m["key"]: m for m in pbkit("list", "methods", "--json").json()["methods"]}
    assert set(rows) >= {"l1", "l2", "lamp", "fpgm", "bnscale", "random"}
    assert rows["bnscale"]["families"] == ["cnn", "yolo"]
    assert all(r["stage"] and r["data"] and r["paper"] for r in rows.values())
    assert (
        rows["growing_reg"]["regularizer"] == "GrowingReg" and rows["taylor"]["data"] == "gradients"
    )
    assert "vit" not in rows["hrank"]["families"] and "yolo" not in rows["obdc"]["families"]


def test_env_json(pbkit) -> None:  # type: ignore[no-untyped-def]
    env = pbkit("env", "--json").json()
    assert env["software"]["torch"].startswith("2.13") and env["host"]["cores_logical"] >= 1
    assert "gpu" in env["unavailable"] or env["gpus"]
    assert env["lock_sha256"]["requirements/base.lock"]


def test_prune_export_bench_report_as_a_user_would(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "runs"
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "fpgm",
        "--speedup",
        "2",
        "--scope",
        "local",
        "--round-to",
        "4",
        "--out",
        out,
        "--json",
    )
    assert r.code == 0, r.err
    payload = r.json()
    run_dir = Path(payload["run_dir"])
    rec = payload["record"]
    assert rec["method"]["scope"] == "local" and rec["method"]["round_to"] == 4
    assert rec["method"]["achieved_speedup"] >= 2.0 and list(rec["stages"]) == ["prune"]
    prune_stage = rec["stages"]["prune"]  # the stage keeps its own facts
    assert (
        prune_stage["config"]["prune"]["scope"] == "local"
        and prune_stage["env"]["host"]["cores_logical"] >= 1
    )
    assert prune_stage["seconds"] > 0 and prune_stage["started_utc"] <= prune_stage["utc"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["dense.pt", "pruned.pt", "record.json"]

    r = pbkit("export", run_dir)
    assert r.code == 0, r.err
    assert "parity ort-cpu" in r.out and (run_dir / "pruned.onnx").is_file()

    r = pbkit(
        "bench",
        run_dir,
        "--backend",
        "torch-cpu",
        "--batch",
        "1",
        "--batch",
        "2",
        "--quick",
        "--json",
    )
    assert r.code == 0, r.err
    lat = r.json()["record"]["latency"]
    assert {(p["backend"], p["batch"], p["variant"]) for p in lat} == {
        ("torch-cpu", b, v) for b in (1, 2) for v in ("dense", "pruned")
    }
    assert all(p["quick"] for p in lat)
    assert all(p["speedup_vs_dense"] > 0 for p in lat if p["variant"] == "pruned")

    r = pbkit("report", out, "--format", "json")
    assert r.code == 0
    board = json.loads(r.out)
    assert board[0]["rows"][0]["method"] == "fpgm"
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_run_with_config_and_overrides(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: resnet20_cifar\nprune:\n  method: lamp\n  speedup: 1.5\n")
    r = pbkit(
        "run",
        cfg,
        "--set",
        f"out={tmp_path / 'runs'}",
        "--set",
        "prune.scope=global",
        "--set",
        "bench.backends=[ort-cpu]",
        *QUICK,
    )
    assert r.code == 0, r.err
    for needle in (
        "params",
        "MACs",
        "achieved",
        "latency ort-cpu fp32 b1",
        "measured",
        "parity ort-cpu",
        "record:",
    ):
        assert needle in r.out


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["prune", "--model", "resnet999", "--method", "l1", "--speedup", "2"],
            "unknown model 'resnet999'",
        ),
        (
            ["prune", "--model", "resnet20_cifar", "--method", "magic", "--speedup", "2"],
            "unknown method 'magic'",
        ),
        (
            [
                "prune",
                "--model",
                "resnet20_cifar",
                "--method",
                "l1",
                "--speedup",
                "2",
                "--scope",
                "wide",
            ],
            "prune.scope",
        ),
        (
            ["prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "1"],
            "prune.speedup",
        ),
        (
            ["prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "0.5"],
            "prune.speedup",
        ),
        (
            ["prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "abc"],
            "not a valid float",
        ),
        (
            [
                "prune",
                "--model",
                "resnet20_cifar",
                "--method",
                "l1",
                "--speedup",
                "2",
                "--dataset",
                "mnist",
            ],
            "unknown dataset 'mnist'",
        ),
        (
            [
                "prune",
                "--model",
                "timm:vit_small_patch16_224",
                "--method",
                "bnscale",
                "--speedup",
                "2",
            ],
            "does not apply to vit",
        ),
        (
            [
                "prune",
                "--model",
                "resnet20_cifar",
                "--method",
                "l1",
                "--speedup",
                "400",
                "--set",
                "prune.iterative_steps=10",
            ],
            "unreachable",
        ),
        (["bench", "/nonexistent/run", "--quick"], "not a run folder"),
        (["run", "/nonexistent.yaml"], "not found"),
        (["report", "/nonexistent"], "not found"),
        (["list", "gadgets"], "Invalid value"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero(
    pbkit, tmp_path: Path, args: list[str], needle: str
) -> None:  # type: ignore[no-untyped-def]
    if args[0] == "prune":
        args = [*args, "--out", str(tmp_path / "runs")]
    r = pbkit(*args)
    assert r.code != 0
    assert needle in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and r.err.splitlines()[-1] == errors[0], (
        r.err
    )  # progress lines may come first
    assert "Traceback" not in r.err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_backend_fails_before_any_work(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: resnet20_cifar\n")
    r = pbkit(
        "run", cfg, "--set", f"out={tmp_path / 'runs'}", "--set", "bench.backends=[tensorrt-x]"
    )
    assert r.code == 2 and "unknown backend 'tensorrt-x'" in r.err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_malformed_yaml(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: resnet20_cifar\n")
    r = pbkit("run", cfg)
    assert r.code == 2 and "malformed YAML at line" in r.err


def test_unwritable_output_folder(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--out",
        blocker / "runs",
    )
    assert r.code == 2 and "is not writable" in r.err


def test_missing_dataset_folder(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--dataset",
        "imagenet",
        "--data-root",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and "imagenet: folder" in r.err and "train" in r.err


def test_corrupt_checkpoint(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "base.pt"
    bad.write_bytes(b"\x00garbage")
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--checkpoint",
        bad,
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and "corrupt or not a PyTorch file" in r.err


def test_checkpoint_weights_are_recorded_with_their_hash(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from pbkit import models
    from pbkit.core.fileio import sha256_file

    ck = tmp_path / "base.pt"
    torch.save(models.build(models.resolve("resnet20_cifar"), seed=9).state_dict(), ck)
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--checkpoint",
        ck,
        "--out",
        tmp_path / "runs",
        "--json",
    )
    assert r.code == 0, r.err
    m = r.json()["record"]["model"]
    assert m["weights"] == "checkpoint" and m["weights_sha256"] == sha256_file(ck)


def test_parity_failure_is_shown_and_exits_nonzero(
    pbkit,
    pruned_run: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pbkit.export import parity

    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    real = parity.reference_outputs
    monkeypatch.setattr(parity, "reference_outputs", lambda m, x: [o + 0.5 for o in real(m, x)])
    r = pbkit("export", run)
    assert r.code == 3
    assert "parity FAILED" in r.err and "FAILED" in r.out
    rec = json.loads((run / "record.json").read_text())
    exported = [
        p for p in rec["parity"] if p["backend"] == "ort-cpu" and p["batch"] == 2
    ]  # the export's check
    assert len(exported) == 2 and not any(p["passed"] for p in exported)


def test_data_driven_and_sparsifying_methods_from_the_cli(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    common = [
        "--model",
        "resnet20_cifar",
        "--speedup",
        "2",
        "--out",
        tmp_path / "runs",
        "--json",
        "--set",
        "model.input_size=16",
        "--set",
        "prune.calibration.dataset=synthetic",
        "--set",
        "prune.calibration.batches=1",
        "--set",
        "prune.calibration.batch_size=8",
        "--set",
        "prune.iterative_steps=40",
        "--set",
        "sparsify.epochs=1",
    ]
    r = pbkit("prune", "--method", "thinet", *common)
    assert r.code == 0, r.err
    assert r.json()["record"]["method"]["calibration"]["dataset"] == "synthetic"
    r = pbkit("prune", "--method", "growing_reg", *common)
    assert r.code == 0, r.err
    m = r.json()["record"]["method"]
    assert (
        m["regularizer"] == "GrowingReg"
        and m["reg_time_s"] > 0
        and len(m["sparsify"]["history"]) == 1
    )


def test_bench_config_runs_a_data_driven_method_offline(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import REPO

    r = pbkit(
        "run",
        REPO / "configs/bench/resnet20_cifar.yaml",
        "--set",
        "prune.method=taylor",
        "--set",
        f"out={tmp_path / 'runs'}",
        "--set",
        "prune.iterative_steps=40",
        "--set",
        "bench.backends=[ort-cpu]",
        *QUICK,
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json()["record"]["method"]["calibration"]["batches"] == 2


def test_options_reach_the_config_without_yaml(pbkit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from pbkit import models
    from pbkit.core.fileio import sha256_file

    folder = tmp_path / "weights dir"
    folder.mkdir()
    ck = folder / "w #2.pt"
    torch.save(models.build(models.resolve("resnet20_cifar"), seed=4).state_dict(), ck)
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--checkpoint",
        ck,
        "--run-id",
        "2026-01-01",
        "--out",
        tmp_path / "runs",
        "--set",
        "prune.iterative_steps=40",
        "--json",
    )
    assert r.code == 0, r.err
    rec = r.json()["record"]
    assert rec["run_id"] == "2026-01-01" and Path(r.json()["run_dir"]).name == "2026-01-01"
    assert rec["model"]["weights_path"] == str(ck.resolve()) and rec["model"][
        "weights_sha256"
    ] == sha256_file(ck)
    assert (
        rec["config"]["model"]["checkpoint"] == str(ck) and rec["config"]["run_id"] == "2026-01-01"
    )
