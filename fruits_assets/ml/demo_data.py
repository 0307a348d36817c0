"""Generates a small offline sample of synthetic fruit-like photos for the demo run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (class folder, fill colour, (width, height) of the fruit as fractions of the frame)
DEMO_CLASSES = (
    ("Apple Demo", (190, 30, 45), (0.62, 0.60)),
    ("Banana Demo", (235, 205, 60), (0.80, 0.34)),
    ("Lime Demo", (110, 175, 50), (0.48, 0.50)),
    ("Plum Demo", (95, 40, 90), (0.52, 0.56)),
)
IMAGES_PER_CLASS = 12
SIZE = 100


def _fruit(rng: np.random.Generator, colour: tuple[int, int, int], shape: tuple[float, float]):
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    w, h = (int(SIZE * s * rng.uniform(0.85, 1.15)) for s in shape)
    cx, cy = (SIZE // 2 + int(rng.integers(-8, 9)) for _ in range(2))
    shade = tuple(int(np.clip(c * rng.uniform(0.8, 1.2), 0, 255)) for c in colour)
    draw.ellipse((cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2), fill=shade)
    highlight = tuple(min(255, c + 60) for c in shade)
    draw.ellipse((cx - w // 5, cy - h // 4, cx, cy - h // 12), fill=highlight)
    image = image.rotate(float(rng.uniform(0, 360)), fillcolor=(255, 255, 255))
    noise = rng.normal(0, 6, (SIZE, SIZE, 3))
    array = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array).filter(ImageFilter.GaussianBlur(0.6))


def generate(root: str | Path, images_per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> Path:
    """Write `<root>/<class>/<n>_100.jpg` per demo class; the same seed gives the same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, colour, shape in DEMO_CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            _fruit(rng, colour, shape).save(folder / f"{index}_100.jpg", quality=92)
    return root
