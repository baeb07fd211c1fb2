"""Two models side by side on photos, one click each: ``python distill/scripts/photo_clicks.py
OUT.jpg BEFORE AFTER PHOTO:X,Y [PHOTO:X,Y ...]``, run with ``PYTHONPATH=.`` from the checkout's
root. BEFORE and AFTER are model names or ``save_pretrained`` folders (``from_pretrained``),
each optionally as ``TITLE=MODEL`` (the row's title; else "before: MODEL", "after: MODEL").
Each photo is clicked at X,Y with the single-mask request ``effvit-sam segment --point``
makes, one row per model, and the mask's pixel count and predicted IoU are printed.

``distill/figures/bundled_model_on_photos.jpg`` is this script on scikit-image's public-domain
``coins`` and ``coffee`` samples (``skimage/data/`` in its wheel), the previous bundled model in
a folder extracted with ``git show REV:effvit_sam/bundled/efficientvit-sam-mini/FILE``::

    python distill/scripts/photo_clicks.py distill/figures/bundled_model_on_photos.jpg \\
        "previous bundled model (commit c5014e9)=/tmp/previous" \\
        "bundled now (the deep student)=efficientvit-sam-mini" coins.png:100,149 coins.png:332,42 \\
        coffee.png:300,150 coffee.png:367,286
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

from effvit_sam import from_pretrained
from effvit_sam.io import read_image
from effvit_sam.predictor import EfficientViTSamPredictor
from effvit_sam.visualize import overlay_masks

ROW_HEIGHT = 240


def parse_click(spec: str) -> tuple[str, tuple[float, float]]:
    path, _, xy = spec.rpartition(":")
    x, y = (float(v) for v in xy.split(","))
    return path, (x, y)


def model_row(title: str, predictor: EfficientViTSamPredictor, clicks) -> Image.Image:
    tiles = []
    for path, image, (x, y) in clicks:
        predictor.set_image(image)
        point = np.array([[x, y]], np.float32)
        masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]),
                                             multimask_output=False)
        print(f"{title}: {path} at {x:g},{y:g}: {int(masks[0].sum())} px, "
              f"predicted IoU {float(scores[0]):.3f}")
        picture = Image.fromarray(overlay_masks(image, masks[:1], points=point,
                                                labels=np.array([1])))
        width = round(picture.width * ROW_HEIGHT / picture.height)
        tiles.append(picture.resize((width, ROW_HEIGHT)))
    row = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1),
                            ROW_HEIGHT + 22), "white")
    ImageDraw.Draw(row).text((4, 4), title, fill="black")
    left = 0
    for tile in tiles:
        row.paste(tile, (left, 22))
        left += tile.width + 6
    return row


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit(__doc__)
    out, before, after, *specs = argv
    clicks = [(path, read_image(path), xy) for path, xy in map(parse_click, specs)]
    rows = []
    for label, spec in (("before", before), ("after", after)):
        title, _, name = spec.rpartition("=")
        predictor = EfficientViTSamPredictor(from_pretrained(name))
        rows.append(model_row(title or f"{label}: {name}", predictor, clicks))
    figure = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        figure.paste(row, (0, top))
        top += row.height
    figure.save(out, quality=88)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
