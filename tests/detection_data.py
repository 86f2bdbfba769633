"""A small detection dataset made on the spot: images with drawn objects and their boxes in YOLO
label format (class cx cy w h, normalised), plus the dataset yaml ultralytics reads. With
``task="segment"`` each object's label is its outline (class x1 y1 x2 y2 ..., normalised polygon);
with ``task="pose"`` its box is followed by 17 keypoints (x y visibility) on the shape, and the
yaml has ``kpt_shape``."""

from __future__ import annotations

import math
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
    task: str = "detect",
) -> Path:
    """``names``: the classes (default: box and disc); shapes past the second are triangles.
    ``task``: detect, segment (polygon labels) or pose (17 keypoints per object)."""
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
                    outline = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
                elif cls == 1:
                    draw.ellipse(box, fill=(30, 30, 200))
                    outline = [
                        (
                            x0 + w / 2 + w / 2 * math.cos(2 * math.pi * k / 16),
                            y0 + h / 2 + h / 2 * math.sin(2 * math.pi * k / 16),
                        )
                        for k in range(16)
                    ]
                else:
                    outline = [(x0, y0 + h), (x0 + w // 2, y0), (x0 + w, y0 + h)]
                    draw.polygon(outline, fill=(30, 160, 30))
                lines.append(_label(task, cls, (x0, y0, w, h), outline, size))
            img.save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {k}: {v}\n" for k, v in names.items())
        + (
            f"kpt_shape: [{KEYPOINTS}, 3]\nflip_idx: {list(range(KEYPOINTS))}\n"
            if task == "pose"
            else ""
        )
    )
    return yaml_path


KEYPOINTS = 17


def _label(
    task: str,
    cls: int,
    xywh: tuple[int, int, int, int],
    outline: list[tuple[float, float]],
    size: int,
) -> str:
    """One object's label line for ``task``."""
    x0, y0, w, h = xywh
    if task == "segment":
        return f"{cls} " + " ".join(f"{x / size:.6f} {y / size:.6f}" for x, y in outline)
    line = (
        f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}"
    )
    if task == "pose":  # keypoints spread over the object's box, all visible
        points = [
            (x0 + w * (0.1 + 0.8 * (k % 5) / 4), y0 + h * (0.1 + 0.8 * (k // 5) / 3))
            for k in range(KEYPOINTS)
        ]
        line += "".join(f" {x / size:.6f} {y / size:.6f} 2" for x, y in points)
    return line
