"""Detection datasets in ultralytics' layout (a data.yaml), checked before use: pbkit never
downloads a dataset, so a yaml whose images are missing is refused before ultralytics could."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_text
from pbkit.data.bundle import DataBundle


def check_dataset(yaml_path: str | Path) -> dict[str, Any]:
    """Read a detection dataset yaml and make sure its images are there (pbkit never downloads)."""
    import yaml

    path = Path(yaml_path).expanduser()
    if not path.is_file():
        raise PbkitError(f"detection dataset yaml {str(path)!r} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PbkitError(f"detection dataset yaml {str(path)!r} is malformed: {e}") from e
    for key in ("train", "val", "names"):
        if key not in cfg:
            raise PbkitError(f"detection dataset yaml {str(path)!r} lacks {key!r}")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    for split in ("train", "val"):
        for rel in cfg[split] if isinstance(cfg[split], list) else [cfg[split]]:
            p = Path(rel) if Path(rel).is_absolute() else root / rel
            if not p.exists():
                raise PbkitError(
                    f"detection dataset: {split} images {str(p)!r} not found; pbkit never downloads"
                    " datasets: fetch them (see the yaml's 'download' key) and retry"
                )
    names = cfg["names"]
    n = len(names) if isinstance(names, list | dict) else int(cfg.get("nc", 0))
    return {
        "yaml": str(path),
        "root": str(root),
        "num_classes": n,
        "augmentation": "ultralytics trainer defaults (mosaic, HSV, flip, scale, translate)",
    }


def detection(yaml_path: str, image_size: int | None = None, name: str | None = None) -> DataBundle:
    """A detection dataset from an ultralytics-style yaml (images must be there: never
    downloaded)."""
    info = check_dataset(yaml_path)
    return DataBundle(
        name or Path(yaml_path).stem,
        info["num_classes"],
        image_size or 640,
        None,
        None,
        info,
        task="detect",
    )


def coco(root: str, image_size: int | None, **_: Any) -> DataBundle:
    """COCO 2017 through ultralytics' own coco.yaml, rooted at <data root>/coco."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("ultralytics")  # its bundled yaml, without importing it
    if spec is None or spec.origin is None:
        raise PbkitError("coco: the ultralytics package is not installed (pip install ultralytics)")
    src = Path(spec.origin).parent / "cfg" / "datasets" / "coco.yaml"
    cfg = yaml.safe_load(src.read_text(encoding="utf-8"))
    cfg["path"] = str(Path(root).expanduser() / "coco")
    cfg.pop("download", None)
    out = Path(root).expanduser() / "coco.pbkit.yaml"
    if not (Path(cfg["path"]) / cfg["val"]).exists():
        raise PbkitError(
            f"coco: images not found under {cfg['path']!r}; pbkit never downloads datasets: place"
            " COCO 2017 there (images/ and labels/ as ultralytics lays them out) or pass"
            " --data-root"
        )
    atomic_write_text(out, yaml.safe_dump(cfg, sort_keys=False))
    return detection(str(out), image_size, name="coco")
