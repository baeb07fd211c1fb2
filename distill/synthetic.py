"""Synthetic scenes with exact ground-truth masks, standing in for SA-1B / COCO / LVIS images.

A scene is a textured background with 3 to 30 overlapping objects of varied shape (ellipses,
polygons, smooth blobs, rings with a hole, thin lines, blobs with thin limbs, tiny objects),
colour, texture and scale, painted in order so later objects occlude earlier ones. Every mask
is the object's *visible* part after painting. Some objects carry a painted sub-part that is
annotated too, mimicking SA-1B's nested part/whole masks. Objects are shaded as if lit, cast
soft (unannotated) shadows, and the finished scene goes through uneven light, a colour cast,
sometimes lens blur, and sensor noise (:mod:`distill.synthetic_photo`), so that models trained
on these scenes meet real photos of simple objects with fewer surprises.

Everything is vectorised numpy (plus PIL's C rasteriser for polygons and lines); a 512-pixel
scene takes milliseconds. The same ``numpy.random.Generator`` state gives the same scene.

Frames: masks and images are ``H x W`` in the original (pixel) frame, ``(x, y) = (col, row)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_photo import cast_shadow, fractal_noise, photographic, shading

SHAPES: tuple[str, ...] = ("ellipse", "polygon", "blob", "ring", "line", "limbed")
"""Shape categories of whole objects (COCO/LVIS category names, in category-id order)."""

PART = "part"
"""Category of a sub-part annotated inside a whole object (SA-1B's nested masks)."""

MIN_VISIBLE_AREA = 16
"""Masks whose visible area is below this many pixels are dropped (SA-1B has none so small)."""

MIN_VISIBLE_FRACTION = 2e-4
"""... nor below this fraction of the image (about 40 pixels of a 512 x 384 scene): slivers
left by occlusion that no annotator would outline."""

ASPECTS: tuple[tuple[int, int], ...] = ((3, 4), (4, 3), (2, 3), (3, 2))
"""``(h, w)`` aspect ratios a scene is drawn with; SA-1B photos are mostly 2:3 / 3:4."""

MIN_COLOUR_DISTANCE = 90.0
"""RGB distance an object's colour keeps from what it is painted over, so it stays visible."""

PART_PROBABILITY = 0.35
TINY_PROBABILITY = 0.06
SIZE_RANGE = (0.04, 0.35)
"""Object radius, log-uniform, as a fraction of the image's short side (tiny ones aside)."""
TINY_RANGE = (0.012, 0.022)
MIN_OBJECTS, MAX_OBJECTS = 3, 30


@dataclass(frozen=True)
class SceneObject:
    """One annotated mask of a scene.

    ``mask``: ``H x W`` bool, the visible pixels. ``category``: one of :data:`SHAPES` or
    :data:`PART`. ``parent``: for a part, the index (in ``Scene.objects``) of its whole object.
    """

    mask: np.ndarray
    category: str
    parent: int | None = None


@dataclass(frozen=True)
class Scene:
    """``image``: ``H x W x 3`` uint8 RGB; ``objects``: wholes, each followed by its parts."""

    image: np.ndarray
    objects: list[SceneObject]


def scene_size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """Pick an ``(h, w)`` with long side ``long_side`` and one of :data:`ASPECTS`."""
    if long_side < 32:
        raise ValueError(f"image long side must be at least 32 pixels, got {long_side}")
    ah, aw = ASPECTS[int(rng.integers(len(ASPECTS)))]
    short = int(round(long_side * min(ah, aw) / max(ah, aw)))
    return (long_side, short) if ah > aw else (short, long_side)


# ---------------------------------------------------------------------------------------------
# backgrounds and textures (float32 RGB in [0, 255])


def _direction(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``h x w`` projection of pixel positions on a random direction, in pixels."""
    angle = rng.uniform(0, np.pi)
    ys, xs = np.ogrid[:h, :w]
    return (xs * np.cos(angle) + ys * np.sin(angle)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency ``h x w x 3`` colour noise: a coarse random grid upsampled bilinearly."""
    grid = rng.integers(30, 226, size=(cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray,
             *, amplitude: float) -> np.ndarray:
    """An ``h x w x 3`` texture around ``colour``: flat, noisy, striped or a gradient.

    ``amplitude`` bounds how far the texture strays from ``colour`` so the contrast that
    :func:`_contrasting_colour` guaranteed survives.
    """
    kind = int(rng.integers(5))
    base = np.broadcast_to(colour.astype(np.float32), (h, w, 3))
    if kind == 0:
        return base.copy()
    if kind == 1:
        return base + rng.standard_normal((h, w, 3), dtype=np.float32) * (amplitude / 3)
    if kind == 4:  # mottled, photograph-like: multi-scale noise, mostly in brightness
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        return base + fractal_noise(rng, h, w)[..., None] * tint * amplitude
    offset = rng.uniform(-amplitude, amplitude, size=3).astype(np.float32)
    proj = _direction(rng, h, w)
    if kind == 2:
        period = rng.uniform(4, 24)
        t = (np.sin(proj * (2 * np.pi / period)) > 0).astype(np.float32)
    else:
        t = proj / max(float(np.abs(proj).max()), 1.0)
    return base + t[..., None] * offset


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured ``h x w x 3`` background: smooth noise, a gradient or stripes, plus grain."""
    kind = int(rng.integers(4))
    c0 = rng.uniform(40, 215, size=3).astype(np.float32)
    if kind == 0:
        bg = _smooth_field(rng, h, w, int(rng.integers(2, 8)))
    elif kind == 3:  # a surface such as wood, stone or cloth: colour plus multi-scale noise
        amplitude = np.float32(rng.uniform(15, 50))
        bg = c0 + fractal_noise(rng, h, w, octaves=5)[..., None] * amplitude
    else:
        c1 = np.clip(c0 + rng.normal(0, 45, size=3), 0, 255).astype(np.float32)
        proj = _direction(rng, h, w)
        if kind == 1:
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:
            period = rng.uniform(6, 48)
            t = 0.5 + 0.5 * np.sin(proj * (2 * np.pi / period))
        bg = c0 + t[..., None] * (c1 - c0)
    grain = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(2, 10))
    return bg + grain


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """An RGB colour at least :data:`MIN_COLOUR_DISTANCE` from ``under`` (or the farthest tried)."""
    candidates = rng.uniform(0, 255, size=(32, 3))
    dist = np.linalg.norm(candidates - under, axis=1)
    ok = np.flatnonzero(dist >= MIN_COLOUR_DISTANCE)
    return candidates[ok[0] if ok.size else int(dist.argmax())]


# ---------------------------------------------------------------------------------------------
# shapes, each rasterised in a local window; offsets (dy, dx) are relative to the shape centre


def _ellipse(dy: np.ndarray, dx: np.ndarray, a: float, b: float, angle: float) -> np.ndarray:
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _blob(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Star-shaped smooth blob: radius ``r * (1 + sum_k a_k cos(k phi + p_k))``."""
    ks = np.arange(2, 6, dtype=np.float32)
    amp = (rng.uniform(0, 0.22, size=ks.size) / np.sqrt(ks - 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=ks.size).astype(np.float32)
    phi = np.arctan2(dy, dx)[..., None]
    radius = r * np.maximum(1 + (amp * np.cos(ks * phi + phase)).sum(-1), 0.3)
    return dy * dy + dx * dx <= radius * radius


def _polar_points(x: float, y: float, radii: np.ndarray,
                  angles: np.ndarray) -> list[tuple[float, float]]:
    """``(x, y)`` vertices at ``radii`` and ``angles`` around ``(x, y)``, for PIL drawing."""
    return list(zip((x + radii * np.cos(angles)).tolist(), (y + radii * np.sin(angles)).tolist(),
                    strict=True))


def _draw(size: tuple[int, int], draw_fn) -> np.ndarray:
    """Rasterise with PIL on an ``h x w`` canvas; ``draw_fn(ImageDraw)`` draws with fill 1."""
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _shape_mask(rng: np.random.Generator, kind: str, window: tuple[int, int, int, int],
                centre: tuple[float, float], r: float) -> np.ndarray:
    """Bool mask of a ``kind`` shape of radius ``r`` inside ``window = (y0, y1, x0, x1)``."""
    y0, y1, x0, x1 = window
    cy, cx = centre
    dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
    local = (y1 - y0, x1 - x0)
    ly, lx = cy - y0, cx - x0  # centre in window coordinates
    angle = rng.uniform(0, np.pi)
    if kind == "ellipse":
        return _ellipse(dy, dx, r, r * rng.uniform(0.4, 1.0), angle)
    if kind == "ring":
        b = r * rng.uniform(0.6, 1.0)
        inner = rng.uniform(0.35, 0.7)
        return _ellipse(dy, dx, r, b, angle) & ~_ellipse(dy, dx, r * inner, b * inner, angle)
    if kind == "blob":
        return _blob(rng, dy, dx, r)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = r * rng.uniform(0.5, 1.0, size=n)
        pts = _polar_points(lx, ly, radii, angles)
        return _draw(local, lambda d: d.polygon(pts, fill=1))
    if kind == "line":
        n = int(rng.integers(2, 5))
        pts = _polar_points(lx, ly, np.full(n, r), rng.uniform(0, 2 * np.pi, size=n))
        width = max(2, int(round(r * rng.uniform(0.05, 0.16))))
        return _draw(local, lambda d: d.line(pts, fill=1, width=width, joint="curve"))
    if kind == "limbed":
        body = _blob(rng, dy, dx, 0.55 * r)
        count = int(rng.integers(1, 4))
        ends = _polar_points(lx, ly, r * rng.uniform(0.9, 1.5, size=count),
                             rng.uniform(0, 2 * np.pi, size=count))
        width = max(2, int(round(r * rng.uniform(0.06, 0.14))))
        limbs = _draw(local, lambda d: [d.line([(lx, ly), e], fill=1, width=width) for e in ends])
        return body | limbs
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")


def _window(h: int, w: int, centre: tuple[float, float], r: float) -> tuple[int, int, int, int]:
    """The image-clipped square that holds every shape of radius ``r`` (limbs reach 1.5 r)."""
    half = int(np.ceil(1.6 * r)) + 3
    cy, cx = int(centre[0]), int(centre[1])
    return max(cy - half, 0), min(cy + half + 1, h), max(cx - half, 0), min(cx + half + 1, w)


# ---------------------------------------------------------------------------------------------
# the scene


@dataclass
class _Painted:
    """A painted object before occlusion is resolved: full-frame masks of the whole and parts."""

    category: str
    parts: list[np.ndarray]


def _paint_object(rng: np.random.Generator, canvas: np.ndarray, owner: np.ndarray,
                  index: int) -> _Painted | None:
    """Paint one random object (and maybe a sub-part) on ``canvas``; mark it in ``owner``."""
    h, w = owner.shape
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    if rng.random() < TINY_PROBABILITY and kind in ("ellipse", "polygon", "blob"):
        r = max(2.5, rng.uniform(*TINY_RANGE) * min(h, w))
    else:
        r = float(np.exp(rng.uniform(*np.log(SIZE_RANGE))) * min(h, w))
    centre = (rng.uniform(0, h), rng.uniform(0, w))
    y0, y1, x0, x1 = win = _window(h, w, centre, r)
    mask = _shape_mask(rng, kind, win, centre, r)
    if not mask.any():
        return None
    cast_shadow(rng, canvas, mask, win, r)
    region = canvas[y0:y1, x0:x1]
    colour = _contrasting_colour(rng, region[mask].mean(0))
    texture = _texture(rng, y1 - y0, x1 - x0, colour, amplitude=25.0)
    dy = (np.arange(y0, y1, dtype=np.float32) - centre[0])[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - centre[1])[None, :]
    texture = texture * shading(rng, dy, dx, r)[..., None]
    region[mask] = texture[mask]
    owner[y0:y1, x0:x1][mask] = index

    painted = _Painted(kind, [])
    area = int(mask.sum())
    if area >= 300 and rng.random() < PART_PROBABILITY:
        # A sub-part centred on a pixel of the object, clipped to it, in a colour that stands
        # out from the object: SA-1B annotates such parts besides the whole.
        ys, xs = np.nonzero(mask)
        pick = int(rng.integers(area))
        pc = (float(ys[pick] + y0), float(xs[pick] + x0))
        part = _shape_mask(rng, ("ellipse", "polygon")[int(rng.integers(2))], win, pc,
                           r * rng.uniform(0.25, 0.5)) & mask
        if MIN_VISIBLE_AREA <= part.sum() <= 0.8 * area:
            pcolour = _contrasting_colour(rng, colour)
            region[part] = _texture(rng, y1 - y0, x1 - x0, pcolour, amplitude=20.0)[part]
            full = np.zeros((h, w), dtype=bool)
            full[y0:y1, x0:x1] = part
            painted.parts.append(full)
    return painted


def _visible_objects(owner: np.ndarray, painted: list[_Painted | None]) -> list[SceneObject]:
    """Resolve occlusion: visible masks of wholes and parts, tiny ones and duplicates dropped."""
    objects: list[SceneObject] = []
    min_area = max(MIN_VISIBLE_AREA, int(MIN_VISIBLE_FRACTION * owner.size))
    for index, item in enumerate(painted):
        if item is None:
            continue
        visible = owner == index
        area = int(visible.sum())
        if area < min_area:
            continue
        parent = len(objects)
        objects.append(SceneObject(visible, item.category))
        for part in item.parts:
            part_visible = part & visible
            # A part occluded down to nothing, or grown equal to its whole, is no extra mask.
            if min_area <= part_visible.sum() < area:
                objects.append(SceneObject(part_visible, PART, parent))
    return objects


def make_scene(rng: np.random.Generator, *, size: tuple[int, int]) -> Scene:
    """Draw one scene of ``size = (h, w)`` pixels.

    Returns a :class:`Scene`: the ``h x w x 3`` uint8 image and its objects, wholes (3 to 30,
    pairwise disjoint visible masks) each followed by its annotated parts (subsets of it).
    """
    h, w = size
    if h < 32 or w < 32:
        raise ValueError(f"scene size must be at least 32x32, got {h}x{w}")
    canvas = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int16)
    painted: list[_Painted | None] = []
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        painted.append(_paint_object(rng, canvas, owner, len(painted)))
    objects = _visible_objects(owner, painted)
    # Heavy occlusion can leave fewer than MIN_OBJECTS; paint more on top (each new object is
    # fully visible, so this ends, and stays within MAX_OBJECTS).
    for _ in range(50):
        wholes = sum(o.parent is None for o in objects)
        if wholes >= MIN_OBJECTS or len(painted) >= 100:
            break
        painted.append(_paint_object(rng, canvas, owner, len(painted)))
        objects = _visible_objects(owner, painted)
    image = np.clip(photographic(rng, canvas), 0, 255).round().astype(np.uint8)
    return Scene(image=image, objects=objects)
