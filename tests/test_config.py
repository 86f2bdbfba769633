from __future__ import annotations

from pathlib import Path

import pytest

from pbkit.core import config
from pbkit.core.errors import PbkitError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_one_yaml_linked_from_configs() -> None:
    assert (REPO / "configs" / "default.yaml").resolve() == config.DEFAULTS_PATH.resolve()
    cfg = config.load()
    assert (cfg.prune.scope, cfg.prune.speedup, cfg.export.opset) == ("protected", 2.0, 18)


RUN_CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.yaml")
    if not p.name.endswith(".study.yaml")
)
STUDIES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.study.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS)
def test_every_shipped_config_is_valid(path: str) -> None:
    from pbkit import models
    from pbkit.pruning import methods

    cfg = config.load(REPO / path)  # a schema error raises PbkitError
    spec = models.resolve(cfg.model.name)  # the names it uses exist...
    assert methods.get(cfg.prune.method, spec.family).key == cfg.prune.method  # ...and fit together
    from pbkit.measure.backends import BACKENDS

    assert all(b in BACKENDS for b in cfg.bench.backends)
    gpu = [BACKENDS[b].device == "cuda" for b in cfg.bench.backends]
    assert all(gpu) == ("/gpu/" in path) and any(gpu) == all(
        gpu
    )  # GPU configs live in configs/bench/gpu/
    if all(gpu):
        assert cfg.prune.round_to == 8  # tensor-core friendly widths for GPU targets
        assert {1, 32} <= set(cfg.bench.batches) and set(cfg.bench.precisions) == {"fp32", "fp16"}


def test_overrides_parse_yaml_values() -> None:
    cfg = config.load(
        None,
        [
            "prune.speedup=4",
            "bench.batches=[1, 8]",
            "model.kwargs.depth=2",
            "prune.round_to=null",
            "dataset.name=digits",
        ],
    )
    assert cfg.prune.speedup == 4.0 and cfg.bench.batches == [1, 8]
    assert (
        cfg.model.kwargs == {"depth": 2}
        and cfg.prune.round_to is None
        and cfg.dataset.name == "digits"
    )


def test_a_bare_off_is_the_choice_off_not_false() -> None:
    """YAML reads ``off`` as false; keys whose choices include off take it as written."""
    cfg = config.load(None, ["bench.engine_accuracy=off", "finetune.amp=off"])
    assert cfg.bench.engine_accuracy == "off" and cfg.finetune.amp == "off"


@pytest.mark.parametrize(
    "override,needle",
    [
        (
            "prune.scoope=local",
            (
                "unknown key 'prune.scoope'; valid keys here: backend, batch, calibration,"
                " interleave_iters"
            ),
        ),
        (
            "prune.scope=wide",
            "prune.scope: invalid value 'wide'; choose 'local', 'global' or 'protected'",
        ),
        ("prune.speedup=1", "prune.speedup"),
        ("nosuch.key=1", "unknown config section 'nosuch'"),
        ("prune=3", "prune"),
        ("justtext", "key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_choices(override: str, needle: str) -> None:
    with pytest.raises(PbkitError) as e:
        config.load(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("prune:\n  method: l1\n  scope: [local\n")
    with pytest.raises(PbkitError, match=r"malformed YAML at line \d+"):
        config.load(p)


def test_missing_and_non_mapping_configs(tmp_path: Path) -> None:
    with pytest.raises(PbkitError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(PbkitError, match="mapping"):
        config.load(p)


def test_text_keys_keep_what_was_written_and_other_keys_parse_as_yaml() -> None:
    cfg = config.load(
        None,
        [
            "run_id=2026-01-01",
            "model.checkpoint=w #2.pt",
            "dataset.name=null",
            "prune.method=l1",
            "prune.speedup=4",
        ],
    )
    assert cfg.run_id == "2026-01-01" and isinstance(cfg.run_id, str)  # YAML would make it a date
    assert cfg.model.checkpoint == "w #2.pt"  # YAML would cut it at the comment
    assert cfg.dataset.name is None and cfg.prune.speedup == 4.0
    assert config.load(None, ["model.name=123"]).model.name == "123"


def test_typed_values_reach_the_config_as_they_are() -> None:
    cfg = config.load(
        None,
        values={
            "model.checkpoint": "dir with spaces/w #2.pt",
            "run_id": "2026-01-01",
            "bench.batches": [1, 8],
            "prune.speedup": 3,
        },
    )
    assert cfg.model.checkpoint == "dir with spaces/w #2.pt" and cfg.run_id == "2026-01-01"
    assert cfg.bench.batches == [1, 8] and cfg.prune.speedup == 3.0
    # --set still wins over an option, as before
    assert config.load(None, ["prune.speedup=5"], values={"prune.speedup": 3}).prune.speedup == 5.0
    with pytest.raises(PbkitError, match="prune.speedup"):
        config.load(None, values={"prune.speedup": "fast"})


def test_the_top_level_seed_sets_every_seed_a_section_leaves_alone(tmp_path: Path) -> None:
    cfg = config.load(None, ["seed=3", "prune.seed=7"])
    assert (
        cfg.model.seed,
        cfg.base.seed,
        cfg.prune.calibration.seed,
        cfg.sparsify.seed,
        cfg.finetune.seed,
    ) == (3, 3, 3, 3, 3)
    assert cfg.prune.seed == 7  # set by the configuration itself
    assert cfg.dataset.seed == 0  # the split stays: every seed tests on the same images
    p = tmp_path / "c.yaml"
    p.write_text("seed: 5\nmodel:\n  seed: 1\n")
    cfg = config.load(p)
    assert (cfg.model.seed, cfg.finetune.seed, cfg.seed) == (1, 5, 5)
    assert config.load().model.seed == 0 and config.load().seed is None


@pytest.mark.parametrize("path", STUDIES)
def test_every_shipped_study_expands_to_its_grid(path: str, tmp_path: Path) -> None:
    import itertools
    import math

    from pbkit import models
    from pbkit.pruning import methods
    from pbkit.study import spec

    weights = tmp_path / "weights.pt"  # studies that name a checkpoint hash it: give them a file
    weights.write_bytes(b"stand-in")
    raw = config.read_yaml(REPO / path)
    sets = [f"model.checkpoint={weights}"] if "coco" in path else []
    st = spec.read(REPO / path, sets)
    points = [
        dict(zip(raw["grid"], values, strict=True))
        for values in itertools.product(*raw["grid"].values())
    ]
    kept = [
        p
        for p in points
        if not any(all(p.get(k) == v for k, v in rule.items()) for rule in raw.get("exclude", []))
    ]
    assert st.name == raw["name"] and len(st.trials) == len(kept) <= math.prod(
        len(v) for v in raw["grid"].values()
    )
    family = models.resolve(st.trials[0].cfg.model.name).family
    for t in st.trials:
        applies = family in methods.get(t.cfg.prune.method).families
        assert (
            t.skip is None
        ) == applies  # non-applicable methods are listed as skipped, not failed
    assert len({t.hash for t in st.trials}) == len(st.trials)  # every grid point is its own run
