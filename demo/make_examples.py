"""Regenerate the bundled example photos: ``python -m demo.make_examples [OUT_DIR]``.

The examples are drawn here with PIL (no downloaded photos): a few solid objects with shading,
texture noise and soft shadows, so that segmenting them is a meaningful exercise for a trained
model. Each is a 480 x 360 JPEG well under 100 KB; a seeded generator makes them reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (480, 360)  # (W, H)


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = SIZE
    t = np.linspace(0, 1, h)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, w, axis=1).astype(np.uint8))


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Mild sensor-like noise and blur so edges and flat areas look photographic, not synthetic.
    arr = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _shadow(image: Image.Image, draw_shape, *, offset: tuple[int, int] = (8, 8)) -> Image.Image:
    """Darken a blurred copy of a shape, shifted by ``offset``: a soft drop shadow."""
    mask = Image.new("L", SIZE, 0)
    draw_shape(ImageDraw.Draw(mask), offset)
    mask = mask.filter(ImageFilter.GaussianBlur(6))
    return Image.composite(Image.new("RGB", SIZE, (20, 20, 20)), image, mask)


def _ellipse(box: tuple[int, int, int, int]):
    return lambda d, o: d.ellipse((box[0] + o[0], box[1] + o[1], box[2] + o[0], box[3] + o[1]),
                                  fill=110)


def _polygon(points: list[tuple[int, int]]):
    return lambda d, o: d.polygon([(x + o[0], y + o[1]) for x, y in points], fill=110)


def shapes(rng: np.random.Generator) -> Image.Image:
    img = _gradient((228, 224, 214), (170, 165, 150))
    img = _shadow(img, _ellipse((60, 90, 200, 230)))
    img = _shadow(img, _polygon([(250, 60), (420, 60), (420, 170), (250, 170)]))
    img = _shadow(img, _polygon([(300, 320), (400, 200), (460, 320)]))
    d = ImageDraw.Draw(img)
    d.ellipse((60, 90, 200, 230), fill=(200, 40, 40))
    d.ellipse((95, 115, 140, 160), fill=(235, 110, 100))  # highlight
    d.rectangle((250, 60, 420, 170), fill=(40, 80, 190))
    d.rectangle((270, 80, 300, 150), fill=(230, 230, 240))
    d.polygon([(300, 320), (400, 200), (460, 320)], fill=(40, 150, 70))
    return _finish(img, rng)


def fruit(rng: np.random.Generator) -> Image.Image:
    w, h = SIZE
    wood = np.zeros((h, w, 3), np.float32) + np.array([150, 100, 60], np.float32)
    grain = np.sin(np.arange(h)[:, None] / 5.0 + rng.normal(0, 0.3, (h, 1)))  # wood-like stripes
    wood *= (0.85 + 0.15 * grain)[..., None]
    img = Image.fromarray(wood.clip(0, 255).astype(np.uint8))
    img = _shadow(img, _ellipse((70, 70, 410, 310)))
    d = ImageDraw.Draw(img)
    d.ellipse((70, 70, 410, 310), fill=(240, 240, 235))
    d.ellipse((100, 95, 380, 285), fill=(225, 225, 220))
    for cx, cy, r in ((170, 170, 48), (265, 150, 44), (230, 235, 46)):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(240, 140, 20))
        d.ellipse((cx - r // 2, cy - r // 2, cx - r // 6, cy - r // 6), fill=(250, 185, 90))
    d.polygon([(300, 220), (350, 190), (375, 150), (385, 160), (365, 215), (310, 240)],
              fill=(235, 210, 60))
    return _finish(img, rng)


def street(rng: np.random.Generator) -> Image.Image:
    img = _gradient((120, 170, 230), (200, 220, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 270, 480, 360), fill=(70, 70, 75))
    d.rectangle((0, 262, 480, 272), fill=(160, 160, 160))
    for x0, wall, roof in ((20, (200, 170, 130), (130, 50, 40)), (180, (230, 220, 200),
                                                                   (60, 60, 90))):
        d.rectangle((x0, 130, x0 + 130, 262), fill=wall)
        d.polygon([(x0 - 10, 130), (x0 + 65, 70), (x0 + 140, 130)], fill=roof)
        for wx in (x0 + 15, x0 + 80):
            d.rectangle((wx, 155, wx + 35, 195), fill=(90, 130, 170))
        d.rectangle((x0 + 50, 205, x0 + 80, 262), fill=(90, 60, 40))
    d.rectangle((350, 110, 470, 262), fill=(160, 190, 160))
    d.rounded_rectangle((250, 250, 410, 310), radius=18, fill=(200, 30, 40))
    d.polygon([(280, 250), (300, 215), (365, 215), (385, 250)], fill=(170, 25, 35))
    for cx in (285, 375):
        d.ellipse((cx - 20, 295, cx + 20, 335), fill=(25, 25, 25))
    return _finish(img, rng)


EXAMPLES = {"shapes": shapes, "fruit": fruit, "street": street}


def write_examples(out_dir: Path, *, seed: int = 0) -> list[Path]:
    """Draw every example into ``out_dir``; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, draw) in enumerate(EXAMPLES.items()):
        path = out_dir / f"{name}.jpg"
        draw(np.random.default_rng(seed + i)).save(path, quality=85)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "examples"
    for p in write_examples(target):
        print(f"{p} {p.stat().st_size // 1024} KB")
