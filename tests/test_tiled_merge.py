"""The seam merge with imperfect tile masks: one-to-one matching and core-believed assembly."""

from __future__ import annotations

import numpy as np

from effvit_sam.tiled import tile_grid
from effvit_sam.tiled_masks import CroppedMask, TileMask, grid_cores, merge_tile_masks

SIZE = (60, 180)  # two tiles: x 0..100 and 80..180 (band 80..100, seam cut at x = 90)
WINDOWS = [(0, 0, 100, 60), (80, 0, 180, 60)]


def _mask(*rects: tuple[int, int, int, int], window: tuple[int, int, int, int]) -> CroppedMask:
    """The union of ``rects`` (x0, y0, x1, y1, full frame) seen through ``window``."""
    full = np.zeros(SIZE, bool)
    for x0, y0, x1, y1 in rects:
        full[y0:y1, x0:x1] = True
    wx0, wy0, wx1, wy1 = window
    return CroppedMask.from_window(full[wy0:wy1, wx0:wx1], wx0, wy0, SIZE)


def _tile(tile: int, *masks: CroppedMask, iou: float = 0.9) -> list[TileMask]:
    return [TileMask(m, tile, iou, 0.95) for m in masks]


def _boxes(merged) -> list[list[float]]:
    return sorted(m.bbox_xywh for m in merged)


def test_grid_cores_partition_the_image():
    height, width = 700, 1100
    windows = [w.rect for w in tile_grid(height, width, 256, 40)]
    cores = grid_cores(windows)
    count = np.zeros((height, width), np.int32)
    for (x0, y0, x1, y1), (wx0, wy0, wx1, wy1) in zip(cores, windows, strict=True):
        assert wx0 <= x0 < x1 <= wx1 and wy0 <= y0 < y1 <= wy1
        count[y0:y1, x0:x1] += 1
    assert count.min() == 1 and count.max() == 1  # every pixel in exactly one core
    assert grid_cores(WINDOWS) == [(0, 0, 90, 60), (90, 0, 180, 60)]


def test_a_looser_second_mask_of_a_tile_does_not_join_the_object():
    obj = (60, 10, 130, 40)  # crosses the seam
    loose = _mask(obj, (60, 8, 100, 10), (5, 5, 40, 25), window=WINDOWS[0])  # + background
    exact = [_mask(obj, window=WINDOWS[0]), _mask(obj, window=WINDOWS[1])]
    tiles = [_tile(0, loose, exact[0]), _tile(1, exact[1])]
    merged = merge_tile_masks(tiles, WINDOWS)
    # The exact mask is the better band match: it alone joins tile 1's; the loose one stays apart.
    assert _boxes(merged) == [[5.0, 5.0, 95.0, 35.0], [60.0, 10.0, 70.0, 30.0]]
    exact = next(m for m in merged if m.bbox_xywh == [60.0, 10.0, 70.0, 30.0])
    assert exact.area == 70 * 30 and exact.tiles == (0, 1)


def test_a_tiles_edge_response_inside_the_neighbours_core_is_not_believed():
    obj = (60, 10, 130, 40)
    # Tile 0 sees the object plus a stray strip along its right edge (x 95..100, in tile 1's
    # core); tile 1, which sees that strip with context, says it is not the object.
    edgy = _mask(obj, (95, 0, 100, 60), window=WINDOWS[0])
    tiles = [_tile(0, edgy), _tile(1, _mask(obj, window=WINDOWS[1]))]
    (merged,) = merge_tile_masks(tiles, WINDOWS)
    assert merged.bbox_xywh == [60.0, 10.0, 70.0, 30.0] and merged.area == 70 * 30


def test_an_object_only_one_tile_found_is_kept_whole_in_the_band():
    # In the band, mostly inside tile 1's core, but only tile 0 returned it: nothing to believe
    # instead, so tile 0's mask stands.
    spot = _mask((86, 20, 98, 30), window=WINDOWS[0])
    merged = merge_tile_masks([_tile(0, spot), []], WINDOWS)
    assert _boxes(merged) == [[86.0, 20.0, 12.0, 10.0]] and merged[0].area == 120


def test_near_copies_of_a_mask_in_one_tile_are_one_object():
    # Three tiles in a row. Tile 1 returns the object twice, the second copy with a few stray
    # pixels of background (its box, not its mask, differs: box NMS kept both). Each copy
    # would win one band and split the object in two; the worse-scored copy is dropped first.
    size = (40, 260)
    windows = [(0, 0, 100, 40), (80, 0, 180, 40), (160, 0, 260, 40)]
    obj = np.zeros(size, bool)
    obj[5:30, 50:210] = True
    stray = obj.copy()
    stray[34:38, 120:130] = True
    stray[29, 160:180] = False

    def seen(mask, w, tile, iou):
        return TileMask(CroppedMask.from_window(mask[:, w[0]:w[2]], w[0], 0, size), tile, iou,
                        0.9)

    tiles = [[seen(obj, windows[0], 0, 0.9)],
             [seen(stray, windows[1], 1, 0.9), seen(obj, windows[1], 1, 0.95)],
             [seen(obj, windows[2], 2, 0.9)]]
    (merged,) = merge_tile_masks(tiles, windows)
    assert merged.area == int(obj.sum()) and merged.tiles == (0, 1, 2)
    assert merged.bbox_xywh == [50.0, 5.0, 160.0, 25.0]
    split = merge_tile_masks(tiles, windows, duplicate_iou=1.0)  # without the check
    assert len(split) == 2
