"""Photographic effects for the made scenes (:mod:`distill.synthetic`), so a model trained on
them meets real photos of simple objects less surprised: shading that makes flat shapes look
lit and round, soft cast shadows (not annotated, as in a photo), multi-scale "natural"
textures, uneven illumination with a colour cast, lens blur and sensor noise.

All float32 RGB in [0, 255] on ``h x w x 3`` arrays, every draw from the scene's
``numpy.random.Generator`` (same state, same bytes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

SHADOW_PROBABILITY = 0.35
BLUR_PROBABILITY = 0.5


def fractal_noise(rng: np.random.Generator, h: int, w: int, *, octaves: int = 4) -> np.ndarray:
    """``h x w`` multi-scale smooth noise in about [-1, 1] (coarse grids upsampled bicubically,
    each finer octave at half the amplitude): mottled, stone- or fabric-like variation."""
    out = np.zeros((h, w), dtype=np.float32)
    cells, amp, total = int(rng.integers(2, 5)), 1.0, 0.0
    for _ in range(octaves):
        grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
        layer = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)
        out += amp * (layer / 127.5 - 1)
        total += amp
        cells, amp = min(cells * 2, max(h, w)), amp * 0.5
    return out / total


def shading(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Multiplicative ``h x w`` shading of an object of radius ``r`` lit from a random side:
    brighter towards the light, darker on the far rim (1 = unchanged)."""
    amplitude = rng.uniform(0.0, 0.3)
    angle = rng.uniform(0, 2 * np.pi)
    lx, ly = np.cos(angle), np.sin(angle)
    side = (dx * lx + dy * ly) / max(r, 1.0)  # -1 .. 1 across the object, towards the light
    radial = np.sqrt(dx * dx + dy * dy) / max(r, 1.0)
    field = 0.6 * np.clip(side, -1.5, 1.5) - 0.4 * np.clip(radial, 0, 1.5) ** 2
    return (1 + amplitude * field).astype(np.float32)


def cast_shadow(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray,
                window: tuple[int, int, int, int], r: float) -> None:
    """Darken, in place, the canvas under ``mask`` (a ``window``-local bool mask) shifted away
    from the light, with a soft edge: the object's shadow on what lies beneath it."""
    if rng.random() >= SHADOW_PROBABILITY:
        return
    y0, y1, x0, x1 = window
    shift = max(1, int(round(r * rng.uniform(0.08, 0.25))))
    angle = rng.uniform(0, 2 * np.pi)
    sy, sx = int(round(shift * np.sin(angle))), int(round(shift * np.cos(angle)))
    h, w = canvas.shape[:2]
    py0, py1 = max(y0 - abs(sy) - 2, 0), min(y1 + abs(sy) + 2, h)
    px0, px1 = max(x0 - abs(sx) - 2, 0), min(x1 + abs(sx) + 2, w)
    local = np.zeros((py1 - py0, px1 - px0), dtype=np.uint8)
    ty, tx = y0 - py0 + sy, x0 - px0 + sx
    my0, my1 = max(ty, 0), min(ty + mask.shape[0], local.shape[0])
    mx0, mx1 = max(tx, 0), min(tx + mask.shape[1], local.shape[1])
    if my1 <= my0 or mx1 <= mx0:
        return
    local[my0:my1, mx0:mx1] = mask[my0 - ty: my1 - ty, mx0 - tx: mx1 - tx] * 255
    soft = Image.fromarray(local).filter(ImageFilter.GaussianBlur(max(1.0, shift / 2)))
    alpha = np.asarray(soft, np.float32)[..., None] / 255 * rng.uniform(0.2, 0.5)
    canvas[py0:py1, px0:px1] *= 1 - alpha


def photographic(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """The finished scene through a camera: uneven light and a colour cast, then (sometimes)
    lens blur, then sensor noise. Returns a new float32 array."""
    h, w = canvas.shape[:2]
    light = 1 + rng.uniform(0, 0.25) * fractal_noise(rng, h, w, octaves=2)
    if rng.random() < 0.5:  # vignetting
        ys, xs = np.ogrid[:h, :w]
        d = ((ys - h / 2) / (h / 2)) ** 2 + ((xs - w / 2) / (w / 2)) ** 2
        light = light * (1 - rng.uniform(0, 0.25) * np.clip(d / 2, 0, 1))
    gains = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    out = canvas * light[..., None].astype(np.float32) * gains
    if rng.random() < BLUR_PROBABILITY:
        radius = rng.uniform(0.3, 1.0) * max(h, w) / 512
        img = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))
        out = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32)
    sigma = rng.uniform(0.5, 5.0)
    return out + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
