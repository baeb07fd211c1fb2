"""Tiled prompting and tiled everything mode (#16) on the tiny model and made wafer images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from distill.wafer import Wafer, WaferLayout
from effvit_sam import EfficientViTSamPredictor, build_sam, cli
from effvit_sam.errors import UserError
from effvit_sam.masks import (
    cropped_mask_to_rle,
    mask_to_rle,
    rle_to_box_xywh,
    rle_to_mask,
    rle_union,
)
from effvit_sam.tiled import TiledSamPredictor, TileEmbeddingCache, tile_grid
from effvit_sam.tiled_everything import AutomaticTileSegmenter, TiledMaskGenerator
from effvit_sam.tiled_masks import CroppedMask
from effvit_sam.tiled_source import TiffSource, open_source, read_reduced
from effvit_sam.tools.bench_tiled import GroundTruthSegmenter
from effvit_sam.tools.segment import tiled_main as segment_tiled

TILE, OVERLAP = 256, 32
TINY = ["--model", "efficientvit-sam-tiny", "--random-weights", "--no-fast"]


@pytest.fixture(scope="module")
def wafer() -> Wafer:
    return Wafer(700, 900, seed=3, layout=WaferLayout(200, 20), defects_per_mpx=30,
                 seam_tile=TILE, seam_overlap=OVERLAP)


@pytest.fixture(scope="module")
def image(wafer) -> np.ndarray:
    return wafer.read(0, 0, wafer.width, wafer.height)


@pytest.fixture
def model():
    return build_sam("efficientvit-sam-tiny").eval()


def test_tiled_tiff_is_read_tile_by_tile(tmp_path, image):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, tile=(64, 64), bigtiff=True)
    with open_source(path) as source:
        assert isinstance(source, TiffSource) and not source.memory_mapped
        assert np.array_equal(source.read(100, 130, 200, 250), image[130:250, 100:200])
        # 100 x 120 pixels touch 2 x 3 tiles of 64 x 64 x 3 bytes, not the 1.9 MB image.
        assert source.bytes_read == 6 * 64 * 64 * 3
        source.read(100, 130, 200, 250)  # the same tiles again: decoded segments are cached
        assert source.bytes_read == 6 * 64 * 64 * 3
        reduced = read_reduced(source, 0, 0, 900, 700, 4)
    assert np.array_equal(reduced, np.asarray(Image.fromarray(image).reduce(4)))


def test_contiguous_tiff_is_memory_mapped_and_pil_limit_is_ours(tmp_path, image):
    tifffile.imwrite(tmp_path / "flat.tif", image)
    with open_source(tmp_path / "flat.tif") as source:
        assert source.memory_mapped and isinstance(source.array, np.memmap)
        assert np.array_equal(source.read(0, 0, 900, 700), image)
    Image.fromarray(image).save(tmp_path / "scan.png")
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(UserError, match="over the 1000-pixel limit.*tiled TIFF"):
        open_source(tmp_path / "scan.png", max_pixels=1000)
    assert saved == Image.MAX_IMAGE_PIXELS  # PIL's global limit is restored
    assert np.array_equal(open_source(tmp_path / "scan.png").read(5, 6, 50, 60), image[6:60, 5:50])


def test_tile_grid_covers_the_image_with_the_overlap():
    windows = tile_grid(700, 900, TILE, OVERLAP)
    assert len(windows) == 3 * 4
    covered = np.zeros((700, 900), int)
    for w in windows:
        assert w.size == (TILE, TILE)
        covered[w.y0:w.y1, w.x0:w.x1] += 1
    assert covered.min() >= 1
    xs = sorted({w.x0 for w in windows})
    assert xs[-1] + TILE == 900 and all(np.diff(xs) <= TILE - OVERLAP)
    assert tile_grid(100, 120, TILE, OVERLAP)[0].rect == (0, 0, 120, 100)


def test_point_prompt_is_the_plain_predictor_on_its_window(model, image):
    tiled = TiledSamPredictor(model, tile=TILE, overlap=OVERLAP, fast=False)
    tiled.set_image(image)
    point = np.array([[530.0, 410.0]])
    result = tiled.predict(point)
    win = result.window
    assert win in tiled.windows and win.scale == 1 and not result.cache_hit
    assert win.x0 < 530 < win.x1 and win.y0 < 410 < win.y1
    plain = EfficientViTSamPredictor(model, fast=False)
    plain.set_image(image[win.y0:win.y1, win.x0:win.x1])
    masks, scores, logits = plain.predict(point - [win.x0, win.y0])
    assert np.array_equal(result.scores, scores)
    assert np.array_equal(result.low_res_logits, logits)
    for got, want in zip(result.masks, masks, strict=True):
        assert np.array_equal(got.region(win.rect), want)
    # A box inside the same tile reuses its embedding.
    again = tiled.predict(box=[500, 380, 560, 440], multimask_output=False)
    assert again.cache_hit and again.window == win and len(again.masks) == 1
    assert (tiled.cache.hits, tiled.cache.misses) == (1, 1)


def test_box_larger_than_a_tile_is_served_downscaled(model, image):
    tiled = TiledSamPredictor(model, tile=TILE, overlap=OVERLAP, fast=False)
    tiled.set_image(image)
    box = np.array([50.0, 60.0, 640.0, 500.0])  # 590 wide: 3 tiles at native resolution
    result = tiled.predict(box=box, multimask_output=False)
    win = result.window
    assert result.scale == 3 and result.records()[0]["scale"] == 3
    assert win.x0 <= 50 and win.x1 >= 640 and win.y0 <= 60 and win.y1 >= 500
    assert win.x1 - win.x0 == 3 * TILE and (win.y0, win.y1) == (0, 700)  # 700 < 768
    plain = EfficientViTSamPredictor(model, fast=False)
    pixels = read_reduced(open_source(image), *win.rect, 3)
    assert pixels.shape[:2] == (234, 256)
    plain.set_image(pixels)
    masks, _, _ = plain.predict(boxes=(box.reshape(2, 2) - [win.x0, win.y0]).reshape(4) / 3,
                                multimask_output=False)
    native = np.repeat(np.repeat(masks[0], 3, 0), 3, 1)[:700, : win.x1 - win.x0]
    assert np.array_equal(result.masks[0].region(win.rect), native)


def test_embedding_cache_is_bounded_in_bytes(model, image):
    tiled = TiledSamPredictor(model, tile=TILE, overlap=OVERLAP, fast=False)
    one = 32 * 64 * 64 * 4  # the tiny model's 1 x 32 x 64 x 64 float32 embedding
    tiled.cache = TileEmbeddingCache(max_bytes=int(2.5 * one))
    tiled.set_image(image)
    for x, y in [(100, 100), (450, 100), (800, 600), (110, 90), (450, 110)]:
        tiled.predict([[x, y]])
    cache = tiled.cache
    assert len(cache) == 2 and cache.nbytes == 2 * one <= cache.max_bytes
    # tiles A, B, C (A evicted), A again (miss, B evicted), B again (miss)
    assert (cache.hits, cache.misses, cache.evictions) == (0, 5, 3)
    tiled.predict([[105, 95]])  # A is cached now
    assert cache.hits == 1


def test_outputs_are_in_the_full_image_frame(model, image):
    tiled = TiledSamPredictor(model, tile=TILE, overlap=OVERLAP, fast=False)
    tiled.set_image(image)
    result = tiled.predict([[820.0, 640.0]])
    win = result.window
    assert (win.x1, win.y1) == (900, 700)  # the bottom-right tile
    for record, crop in zip(result.records(), result.masks, strict=True):
        dense = rle_to_mask(record["segmentation"])
        assert dense.shape == (700, 900) and np.array_equal(dense, crop.to_dense())
        assert not dense[: win.y0].any() and not dense[:, : win.x0].any()
        assert record["area"] == int(dense.sum())
        if record["area"]:
            assert record["bbox"] == rle_to_box_xywh(record["segmentation"])
            assert crop.mask.shape == (int(record["bbox"][3]), int(record["bbox"][2]))


def test_cropped_mask_rle_equals_the_dense_encoding():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < rng.random()
        full = np.zeros((height, width), bool)
        full[y0:y0 + h, x0:x0 + w] = crop
        assert cropped_mask_to_rle(crop, x0, y0, height, width) == mask_to_rle(full)
    with pytest.raises(ValueError, match="does not fit"):
        cropped_mask_to_rle(np.ones((3, 3), bool), 8, 0, 10, 10)
    a, b, c = (rng.random((30, 40)) < 0.3 for _ in range(3))
    assert rle_union([mask_to_rle(m) for m in (a, b, c)]) == mask_to_rle(a | b | c)
    with pytest.raises(ValueError, match="different image sizes"):
        rle_union([mask_to_rle(a), mask_to_rle(a[:10])])


def _objects(size, rects_or_masks):
    out = []
    for item in rects_or_masks:
        full = np.zeros(size, bool)
        if isinstance(item, tuple):
            x0, y0, x1, y1 = item
            full[y0:y1, x0:x1] = True
        else:
            full = item
        out.append(CroppedMask.from_window(full, 0, 0, size))
    return out


def test_seam_merge_with_an_oracle_gives_one_mask_per_object():
    size = (300, 500)  # tiles x 0..256 and 244..500, y 0..256 and 44..300
    disc = np.hypot(*np.ogrid[-150:150, -250:250]) < 40  # centred on both seams
    objects = _objects(size, [
        (200, 100, 300, 140),  # crosses the vertical seam
        (246, 10, 254, 20),  # entirely inside the vertical overlap band: seen by two tiles
        (20, 20, 60, 60), (400, 250, 480, 298),  # inside one tile each
        disc,  # in all four tiles
        (0, 200, 500, 210),  # a long scratch through two tiles... and both bands
    ])
    oracle = GroundTruthSegmenter(objects)
    tiled = TiledMaskGenerator(oracle, tile=TILE, overlap=12, batch_size=3)
    records = tiled.generate(np.zeros((*size, 3), np.uint8))
    assert oracle.encode_calls == 2 and oracle.tiles_encoded == 4
    assert len(records) == len(objects)
    by_mask = {mask_to_rle(o.to_dense())["counts"]: o for o in objects}
    for record in records:
        assert record["segmentation"]["counts"] in by_mask  # each equals one GT object exactly
    assert len({r["segmentation"]["counts"] for r in records}) == len(objects)
    disc_record = next(r for r in records if r["area"] == int(disc.sum()))
    assert disc_record["tiles"] == [0, 1, 2, 3]
    merged = tiled.generate_merged(np.zeros((*size, 3), np.uint8))
    disc_object = next(m for m in merged if m.area == int(disc.sum()))
    assert len(disc_object.parts) == 4  # kept as the four tiles' crops, not one dense array
    assert all(p.mask.shape[0] <= TILE and p.mask.shape[1] <= TILE for p in disc_object.parts)
    band = next(r for r in records if r["bbox"] == [246.0, 10.0, 8.0, 10.0])
    assert band["tiles"] == [0, 1]  # found twice, kept once


def test_touching_objects_of_one_tile_stay_apart():
    size = (300, 500)
    objects = _objects(size, [(230, 100, 250, 140), (250, 100, 270, 140)])  # both in the band
    tiled = TiledMaskGenerator(GroundTruthSegmenter(objects), tile=TILE, overlap=12)
    assert sorted(r["bbox"][0] for r in tiled.generate(np.zeros((*size, 3), np.uint8))) == \
        [230.0, 250.0]


class _Crash(RuntimeError):
    pass


class _CrashingOracle(GroundTruthSegmenter):
    def encode(self, images):
        if self.encode_calls == 2:
            raise _Crash("killed")
        return super().encode(images)


def test_resume_skips_finished_tiles(tmp_path, wafer, image):
    objects = [CroppedMask.from_window(crop, x0, y0, image.shape[:2])
               for _, crop, x0, y0 in wafer.objects() if crop.any()]
    state = tmp_path / "state.json"
    first = TiledMaskGenerator(_CrashingOracle(objects), tile=TILE, overlap=OVERLAP,
                               batch_size=4)
    with pytest.raises(_Crash):
        first.generate(image, state_path=state)
    assert len(json.loads(state.read_text())["done"]) == 8  # two batches of 4 finished
    oracle = GroundTruthSegmenter(objects)
    resumed = TiledMaskGenerator(oracle, tile=TILE, overlap=OVERLAP, batch_size=4)
    records = resumed.generate(image, state_path=state)
    assert oracle.tiles_encoded == 12 - 8 and resumed.tiles_encoded == 4
    fresh = TiledMaskGenerator(GroundTruthSegmenter(objects), tile=TILE, overlap=OVERLAP)
    assert records == fresh.generate(image)
    assert len(records) == len(objects)
    other = TiledMaskGenerator(GroundTruthSegmenter(objects), tile=TILE, overlap=64)
    with pytest.raises(UserError, match="other settings.*overlap"):
        other.generate(image, state_path=state)


def test_resume_with_the_model_encodes_nothing_again(tmp_path, model, image):
    from effvit_sam.automatic import EfficientViTSamAutomaticMaskGenerator

    generator = EfficientViTSamAutomaticMaskGenerator(
        model, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0, fast=False)
    calls = []
    generator.predictor.model.image_encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(len(inputs[0])))
    crop = np.ascontiguousarray(image[:256, :400])  # two tiles
    tiled = TiledMaskGenerator(AutomaticTileSegmenter(generator), tile=TILE, overlap=OVERLAP,
                               batch_size=2)
    state = tmp_path / "s.json"
    records = tiled.generate(crop, state_path=state)
    assert calls == [2]  # both tiles in one batched encoder call
    assert records and all(r["segmentation"]["size"] == [256, 400] for r in records)
    assert tiled.generate(crop, state_path=state) == records
    assert calls == [2]
    other = EfficientViTSamAutomaticMaskGenerator(
        build_sam("efficientvit-sam-tiny").eval(), points_per_side=2, pred_iou_thresh=0,
        stability_score_thresh=0, fast=False)  # other random weights
    with pytest.raises(UserError, match=r"other settings \(segmenter differ"):
        TiledMaskGenerator(AutomaticTileSegmenter(other), tile=TILE, overlap=OVERLAP).generate(
            crop, state_path=state)


def test_cli_prompts_and_everything_write_json_and_overview(tmp_path, wafer):
    path = tmp_path / "wafer.tif"
    wafer.write_tiff(path, tile=128)
    js, png = tmp_path / "p.json", tmp_path / "p.png"
    argv = ["segment-tiled", str(path), *TINY, "--tile", "256", "--overlap", "32",
            "--point", "530,410", "--point", "20,690", "--box", "40,40,700,690",
            "--json", str(js), "--output", str(png), "--overview-size", "300"]
    assert cli.main(argv) == 0
    doc = json.loads(js.read_text())
    # `segment --tile` is the same command (the spelling)
    js_segment = tmp_path / "s.json"
    assert cli.main(["segment", *argv[1:-6], "--json", str(js_segment), "--output",
                     str(tmp_path / "s.png"), "--overview-size", "300"]) == 0
    assert json.loads(js_segment.read_text())["annotations"] == doc["annotations"]
    assert (doc["mode"], doc["height"], doc["width"], doc["tile"]) == ("prompts", 700, 900, 256)
    anns = doc["annotations"]
    assert [a["prompt_index"] for a in anns] == [0, 1, 2]
    assert [a["scale"] for a in anns] == [1, 1, 3]
    for a in anns:
        assert a["area"] == int(rle_to_mask(a["segmentation"]).sum())
    assert np.asarray(Image.open(png)).shape == (234, 300, 3)  # 1/3 scale, ceil
    js2, png2 = tmp_path / "e.json", tmp_path / "e.png"
    small = tmp_path / "small.tif"  # two tiles, to keep the automatic generator quick
    tifffile.imwrite(small, wafer.read(0, 0, 400, 256), tile=(64, 64))
    argv = [str(small), *TINY, "--tile", "256", "--overlap", "32", "--everything",
            "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh",
            "0", "--json", str(js2), "--output", str(png2), "--resume", str(tmp_path / "s")]
    assert segment_tiled(argv) == 0
    doc = json.loads(js2.read_text())
    assert doc["mode"] == "everything" and doc["annotations"]
    for a in doc["annotations"]:
        assert a["area"] == int(rle_to_mask(a["segmentation"]).sum()) and a["tiles"]
    assert (tmp_path / "s").is_file()
    assert np.asarray(Image.open(png2)).shape == (256, 400, 3)


def test_bad_input_is_a_user_error(tmp_path, capsys, model):
    with pytest.raises(UserError, match="image not found"):
        segment_tiled([str(tmp_path / "missing.tif"), *TINY, "--everything"])
    image = tmp_path / "x.png"
    Image.new("RGB", (300, 200)).save(image)
    with pytest.raises(UserError, match="tile must be at least 64"):
        segment_tiled([str(image), *TINY, "--tile", "32", "--overlap", "0", "--everything"])
    with pytest.raises(UserError, match=r"^--overlap must be >= 0 and less than --tile \(128\)"):
        segment_tiled([str(image), *TINY, "--tile", "128", "--overlap", "128", "--everything"])
    with pytest.raises(UserError, match="background points"):
        segment_tiled([str(image), *TINY, "--point", "10,10,0"])
    assert cli.main(["segment-tiled", str(tmp_path / "none.tif"), *TINY, "--point", "1,1"]) == 2
    assert "effvit-sam segment-tiled: error: image not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="overlap"):
        TiledSamPredictor(model, tile=256, overlap=300, fast=False)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="not a readable TIFF"):
        open_source(tmp_path / "bad.tif")


def test_commands_and_bench_prompt_part(tmp_path, capsys):
    import importlib

    from effvit_sam.tools import bench_tiled

    for name in ("segment-tiled", "make-wafer", "bench-tiled"):
        module, func, _ = cli.COMMANDS[name]
        assert callable(getattr(importlib.import_module(module), func))
    argv = ["--part", "prompts", "--prompts", "3", "--workdir", str(tmp_path), "--size", "300",
            "--model",
            "efficientvit-sam-tiny", "--no-fast", "--tile", "128", "--overlap", "16", "--report",
            str(tmp_path / "r.json")]
    assert bench_tiled.main(argv) == 0
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert report["prompts"] == 3 and report["all_equal"] is True
    assert report["peak_rss_mb"] > 0 and report["cache"]["misses"] >= 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith('{"prompt"')]
    assert len(rows) == 3 and rows[-1]["scale"] > 1  # the die box is larger than a tile
    assert "box" in rows[1]["prompt"] and rows[1]["scale"] == 1
