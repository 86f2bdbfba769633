"""A small detection dataset made on the spot: images with drawn objects and their boxes in YOLO
label format (class cx cy w h, normalised), plus the dataset yaml ultralytics reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAMES = {0: "box", 1: "disc"}


def make(
    root: Path,
    n_train: int = 16,
    n_val: int = 8,
    size: int = 128,
    seed: int = 0,
    names: dict[int, str] | None = None,
) -> Path:
    """``names``: the classes (default: box and disc); shapes past the second are triangles."""
    names = names or NAMES
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.fromarray(rng.integers(180, 230, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(img)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                cls = int(rng.integers(0, len(names)))
                w, h = (int(v) for v in rng.integers(size // 6, size // 3, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                box = (x0, y0, x0 + w, y0 + h)
                if cls == 0:
                    draw.rectangle(box, fill=(200, 30, 30))
                elif cls == 1:
                    draw.ellipse(box, fill=(30, 30, 200))
                else:
                    draw.polygon(
                        [(x0, y0 + h), (x0 + w // 2, y0), (x0 + w, y0 + h)], fill=(30, 160, 30)
                    )
                lines.append(
                    f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f}"
                    f" {h / size:.6f}"
                )
            img.save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {k}: {v}\n" for k, v in names.items())
    )
    return yaml_path
