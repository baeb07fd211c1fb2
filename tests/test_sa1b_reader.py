"""The SA-1B reader: sample fields and frames, mask sampling, rank/worker splitting, skips."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distill.sa1b import (
    ANNOTATION_SKIP_REASONS,
    SKIP_REASONS,
    SkipSample,
    SkipStats,
    collate_sa1b,
    decode_sample,
    sa1b_dataset,
)
from distill.synthetic_writers import write_sa1b_shards
from effvit_sam.geometry import mask_to_low_res, preprocess_image, preprocess_shape

ENC = 256  # the tiny model's encoder size
PER_SHARD = 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("sa1b")
    return [str(p) for p in write_sa1b_shards(out, num_shards=4, images_per_shard=PER_SHARD,
                                              seed=7, image_size=200)]


def raw_members(path: str) -> dict[str, dict]:
    """``{stem: {"jpg": bytes, "json": dict}}`` read with tarfile alone."""
    out: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            stem, ext = m.name.rsplit(".", 1)
            data = tar.extractfile(m).read()
            out.setdefault(stem, {})[ext] = json.loads(data) if ext == "json" else data
    return out


def keys(dataset) -> list[str]:
    return [s["key"] for s in dataset]


def test_mask_to_low_res_hand_computed():
    square = np.zeros((512, 512), dtype=bool)  # x2 to the prompt frame, then /4: x0.5
    square[100:200, 40:80] = True
    low = mask_to_low_res(square)
    expected = torch.zeros(256, 256, dtype=torch.bool)
    expected[50:100, 20:40] = True
    assert torch.equal(low, expected)
    # 300 x 400 -> 768 x 1024 prompt frame; the top half (150 rows) -> 384 rows -> 96 low-res
    # rows, all 256 columns; the padding below row 192 stays empty.
    top = np.zeros((300, 400), dtype=bool)
    top[:150] = True
    low = mask_to_low_res(top)
    assert low[:96].all() and not low[96:].any()
    # Downscaling (a 1500 x 2250 SA-1B photo): a 400-px square keeps its place and size.
    big = torch.zeros(2, 1500, 2250, dtype=torch.bool)
    big[1, 300:700, 900:1300] = True
    low = mask_to_low_res(big)
    assert low.shape == (2, 256, 256) and not low[0].any()
    rows, cols = low[1].nonzero().T
    scale = 1024 / 2250 / 4
    assert abs(rows.min() - 300 * scale) <= 1 and abs(rows.max() + 1 - 700 * scale) <= 1
    assert abs(cols.min() - 900 * scale) <= 1 and abs(cols.max() + 1 - 1300 * scale) <= 1


def test_sample_fields_shapes_and_frames(shards):
    members = raw_members(shards[0])
    dataset = sa1b_dataset(shards[0], encoder_size=ENC, max_masks=4, keep_raw=True)
    samples = list(dataset)
    assert [s["key"] for s in samples] == list(members)
    for s in samples:
        rgb = np.asarray(Image.open(io.BytesIO(members[s["key"]]["jpg"])).convert("RGB"))
        h, w = rgb.shape[:2]
        assert s["original_size"] == (h, w)
        assert s["input_size"] == preprocess_shape(h, w, 1024)
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, ENC, ENC)
        assert torch.equal(s["image"], preprocess_image(rgb, ENC)[0])
        assert torch.equal(s["image_raw"], torch.from_numpy(rgb).permute(2, 0, 1))
        masks, boxes = s["masks"], s["boxes"]
        assert masks.dtype == torch.bool and masks.shape[1:] == (256, 256)
        assert 1 <= len(masks) <= 4 and boxes.shape == (len(masks), 4)
        assert boxes.dtype == torch.float32
        # Every mask is one of the image's annotations (reduced to low-res), none twice.
        anns = members[s["key"]]["json"]["annotations"]
        low = mask_to_low_res(np.stack([mask_util.decode(a["segmentation"]) for a in anns]) > 0)
        matches = [next(i for i in range(len(low)) if torch.equal(low[i], m)) for m in masks]
        assert len(set(matches)) == len(matches)
        for k, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
            # The prompt-frame box is the low-res mask's extent x4, within a low-res pixel.
            ys, xs = mask.nonzero().T
            extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() * 4
            assert (box - extent).abs().max() <= 6, (s["key"], k, box, extent)
            x, y, bw, bh = anns[matches[k]]["bbox"]
            sx, sy = s["input_size"][1] / w, s["input_size"][0] / h
            assert torch.allclose(box, torch.tensor([x * sx, y * sy, (x + bw) * sx,
                                                     (y + bh) * sy]))


def test_mask_size_sets_the_targets_side(shards):
    """A model with a 96 x 96 embedding trains on 384 x 384 targets: the same annotations,
    sampled alike, reduced to the finer frame; the boxes do not change."""
    base = list(sa1b_dataset(shards[0], encoder_size=ENC, max_masks=4))
    fine = list(sa1b_dataset(shards[0], encoder_size=384, max_masks=4, mask_size=384))
    members = raw_members(shards[0])
    assert [s["key"] for s in fine] == [s["key"] for s in base]
    for coarse, s in zip(base, fine, strict=True):
        assert s["masks"].shape[1:] == (384, 384) and len(s["masks"]) == len(coarse["masks"])
        assert torch.equal(s["boxes"], coarse["boxes"])
        anns = members[s["key"]]["json"]["annotations"]
        full = np.stack([mask_util.decode(a["segmentation"]) for a in anns]) > 0
        low = mask_to_low_res(full, low_res=384)
        assert all(any(torch.equal(m, cand) for cand in low) for m in s["masks"])
    with pytest.raises(ValueError, match="mask_size"):
        sa1b_dataset(shards[0], encoder_size=ENC, max_masks=4, mask_size=0)


def test_mask_sampling_reproducible_and_bounded(shards):
    def masks(seed: int, epoch: int = 0, max_masks: int = 2) -> list[torch.Tensor]:
        dataset = sa1b_dataset(shards[0], encoder_size=ENC, max_masks=max_masks, seed=seed)
        dataset.set_epoch(epoch)
        return [s["masks"] for s in dataset]

    first = masks(0)
    assert all(len(m) == 2 for m in first)
    assert all(torch.equal(a, b) for a, b in zip(first, masks(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, masks(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, masks(0, epoch=1), strict=True))
    # With room for every mask, K is the number of annotations visible at 256 x 256.
    everything = masks(0, max_masks=1000)
    members = raw_members(shards[0])
    for m, member in zip(everything, members.values(), strict=True):
        anns = member["json"]["annotations"]
        low = mask_to_low_res(np.stack([mask_util.decode(a["segmentation"]) for a in anns]) > 0)
        assert len(m) == int(low.flatten(1).any(1).sum())


def test_ranks_get_disjoint_equal_splits(shards, monkeypatch):
    all_keys = {k for path in shards for k in raw_members(path)}
    split = [keys(sa1b_dataset(shards, encoder_size=ENC, max_masks=1, rank=r, world_size=2))
             for r in (0, 1)]
    assert len(split[0]) == len(split[1]) == 2 * PER_SHARD
    assert not set(split[0]) & set(split[1]) and set(split[0]) | set(split[1]) == all_keys
    # The same split from the environment, as torchrun / accelerate set it.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert keys(sa1b_dataset(shards, encoder_size=ENC, max_masks=1)) == split[1]


def test_resampled_ranks_disjoint_with_fixed_length(shards):
    split = [keys(sa1b_dataset(shards, encoder_size=ENC, max_masks=1, resampled=True,
                               epoch_length=7, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    assert len(split[0]) == len(split[1]) == 7  # more than a rank's 6 images: resampled
    own = [{k for path in shards[r::2] for k in raw_members(path)} for r in (0, 1)]
    assert set(split[0]) <= own[0] and set(split[1]) <= own[1]


def test_uneven_shards_equal_epoch_length(shards):
    """3 shards over 2 ranks: cycling to epoch_length keeps ranks equal (no DDP hang)."""
    lengths = [len(keys(sa1b_dataset(shards[:3], encoder_size=ENC, max_masks=1, epoch_length=5,
                                     rank=r, world_size=2))) for r in (0, 1)]
    assert lengths == [5, 5]
    assert len(sa1b_dataset(shards[:3], encoder_size=ENC, max_masks=1, epoch_length=5)) == 5


@pytest.mark.parametrize("num_shards", [4, 1])  # shards per worker, or samples by stride
def test_dataloader_workers_split_without_overlap(shards, num_shards):
    dataset = sa1b_dataset(shards[:num_shards], encoder_size=ENC, max_masks=2)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_sa1b)
    seen = []
    for batch in loader:
        assert batch["image"].shape == (len(batch["key"]), 3, ENC, ENC)
        assert all(isinstance(batch[f], list) for f in ("masks", "boxes", "original_size"))
        seen += batch["key"]
    assert sorted(seen) == sorted(keys(dataset))
    assert len(seen) == len(set(seen)) == num_shards * PER_SHARD


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def corrupt_shard(shards, tmp_path_factory) -> str:
    """Good samples around one of each kind of corrupt sample."""
    good = list(raw_members(shards[0]).items())
    path = tmp_path_factory.mktemp("corrupt") / "sa_000000.tar"
    with tarfile.open(path, "w") as tar:
        def add(stem: str, jpg: bytes | None, record: dict | bytes | None) -> None:
            if jpg is not None:
                _add(tar, f"{stem}.jpg", jpg)
            if record is not None:
                data = record if isinstance(record, bytes) else json.dumps(record).encode()
                _add(tar, f"{stem}.json", data)

        (stem, sample) = good[0]
        jpg, record = sample["jpg"], sample["json"]
        add(stem, jpg, record)
        add("sa_901", b"not a jpeg", record)
        add("sa_902", jpg[: len(jpg) // 3], record)  # truncated jpeg
        add("sa_903", jpg, b"{not json")
        add("sa_904", jpg, {**record, "annotations": []})
        add("sa_905", jpg, None)
        wrong = json.loads(json.dumps(record))
        for ann in wrong["annotations"]:
            ann["segmentation"]["size"] = [7, 9]  # the json of another image
        add("sa_906", jpg, wrong)
        add("sa_907", jpg, with_bad_annotations(record))  # kept, its 3 bad annotations counted
        all_bad = json.loads(json.dumps(record))
        for ann in all_bad["annotations"]:
            ann["segmentation"]["counts"] = "0"
        add("sa_908", jpg, all_bad)
        add(good[1][0], good[1][1]["jpg"], good[1][1]["json"])
    return str(path)


BAD_ANNOTATIONS = 3


def with_bad_annotations(record: dict) -> dict:
    """``record`` with a too-short, a garbage and a wrong-size RLE added among its annotations
    (each with a positive ``area``, so only the RLE check can catch them)."""
    out = json.loads(json.dumps(record))
    anns = out["annotations"]
    h, w = anns[0]["segmentation"]["size"]
    bad = [{"size": [h, w], "counts": "0"}, {"size": [h, w], "counts": "ab~~"},
           {**anns[0]["segmentation"], "size": [h, w + 1]}]
    for i, seg in enumerate(bad):
        anns.insert(2 * i, {**anns[0], "id": 9000 + i, "segmentation": seg, "area": 100})
    return out


def expected_skips(shards) -> dict[str, int]:
    """The corrupt shard's counts: samples by reason, and the bad RLEs of sa_907 and of sa_908
    (whose every annotation is bad)."""
    first = next(iter(raw_members(shards[0]).values()))["json"]["annotations"]
    return {**dict.fromkeys(SKIP_REASONS + ANNOTATION_SKIP_REASONS, 0), "bad_image": 2,
            "bad_json": 1, "no_annotations": 2, "missing_member": 1, "size_mismatch": 1,
            "bad_rle": BAD_ANNOTATIONS + sum(a["area"] > 0 for a in first)}


def test_corrupt_samples_skipped_counted_and_logged(corrupt_shard, shards, caplog):
    good = list(raw_members(shards[0]))[:2]
    stats = SkipStats()
    with caplog.at_level(logging.WARNING, logger="distill.sa1b"):
        samples = list(sa1b_dataset(corrupt_shard, encoder_size=ENC, max_masks=2))
    assert [s["key"] for s in samples] == [good[0], "sa_907", good[1]]
    for s in samples:
        stats.update(s)
    assert stats.totals == expected_skips(shards)
    for key in ("sa_901", "sa_902", "sa_903", "sa_904", "sa_905", "sa_906", "sa_908"):
        assert key in caplog.text
    assert "sa_907: passing over 3 of" in caplog.text and "too short" in caplog.text


def test_bad_annotations_passed_over_counted_and_the_rest_kept(shards):
    """A sample with a too-short, a garbage and a wrong-size RLE among its annotations trains on
    exactly what the same sample without them gives (same masks, same boxes, same sampling)."""
    stem, member = next(iter(raw_members(shards[0]).items()))
    clean = {"__key__": stem, "jpg": member["jpg"], "json": json.dumps(member["json"]).encode()}
    dirty = {**clean, "json": json.dumps(with_bad_annotations(member["json"])).encode()}
    for max_masks in (2, 1000):
        counts = Counter()
        got = decode_sample(dirty, encoder_size=ENC, max_masks=max_masks, seed=3,
                            skip_counts=counts)
        want = decode_sample(clean, encoder_size=ENC, max_masks=max_masks, seed=3)
        assert counts == {"bad_rle": BAD_ANNOTATIONS}
        assert torch.equal(got["masks"], want["masks"]) and len(got["masks"]) >= 1
        assert torch.equal(got["boxes"], want["boxes"])
    good = len(member["json"]["annotations"])
    assert len(got["masks"]) == good  # every good annotation is visible at 256 x 256 here


def test_sample_whose_every_annotation_is_bad_is_skipped(shards):
    stem, member = next(iter(raw_members(shards[0]).items()))
    record = json.loads(json.dumps(member["json"]))
    for ann in record["annotations"]:
        ann["segmentation"]["counts"] = ann["segmentation"]["counts"][:-2]  # truncated
    counts = Counter()
    with pytest.raises(SkipSample) as skip:
        decode_sample({"__key__": stem, "jpg": member["jpg"], "json": json.dumps(record).encode()},
                      encoder_size=ENC, max_masks=2, seed=0, skip_counts=counts)
    assert skip.value.reason == "no_annotations" and "every annotation's RLE is bad" in str(
        skip.value)
    assert counts == {"bad_rle": len(record["annotations"])}


def test_skip_counts_reach_the_main_process_from_workers(corrupt_shard, shards):
    loader = DataLoader(sa1b_dataset([corrupt_shard, shards[1]], encoder_size=ENC, max_masks=2),
                        batch_size=1, num_workers=2, collate_fn=collate_sa1b)
    stats = SkipStats()
    for batch in loader:
        stats.update(batch)
    assert stats.totals == expected_skips(shards)


def test_truncated_shard_warns_and_continues(shards, tmp_path, caplog):
    data = Path(shards[0]).read_bytes()
    cut = tmp_path / "sa_000000.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with caplog.at_level(logging.WARNING, logger="distill.sa1b"):
        samples = list(sa1b_dataset([str(cut), shards[1]], encoder_size=ENC, max_masks=1))
    stats = SkipStats()
    for s in samples:
        stats.update(s)
    got = [s["key"] for s in samples]
    assert got[-PER_SHARD:] == list(raw_members(shards[1]))  # the next shard is read whole
    assert 1 <= len(got) - PER_SHARD < PER_SHARD  # only the first shard's intact samples
    assert stats.totals["shard_error"] >= 1
    assert "corrupt or unreadable" in caplog.text


def test_bad_arguments_raise(shards):
    with pytest.raises(ValueError, match="epoch_length"):
        sa1b_dataset(shards, encoder_size=ENC, max_masks=1, resampled=True)
    with pytest.raises(ValueError, match="at least one shard per rank"):
        sa1b_dataset(shards[:1], encoder_size=ENC, max_masks=1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="not in a world"):
        sa1b_dataset(shards, encoder_size=ENC, max_masks=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_masks"):
        sa1b_dataset(shards, encoder_size=ENC, max_masks=0)
    with pytest.raises(TypeError):
        len(sa1b_dataset(shards, encoder_size=ENC, max_masks=1))


def _ddp_worker(rank: int, shards: list[str], port: int, out_dir: str, workers: int) -> None:
    """One rank of a real gloo process group: an all_reduce per batch, as DDP does."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        dataset = sa1b_dataset(shards, encoder_size=ENC, max_masks=1, epoch_length=5)
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_sa1b)
        seen = []
        for batch in loader:
            dist.all_reduce(torch.ones(1))  # hangs (times out) if ranks had unequal batches
            seen += batch["key"]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_process_group_uneven_shards_no_hang(shards, tmp_path):
    """3 shards over 2 gloo ranks: rank from torch.distributed, equal batch counts (every
    all_reduce pairs up), disjoint keys. (Workers inside ranks: the in-process tests above;
    a 2-worker variant here passed too but costs a minute on a shared CPU.)"""
    workers = 0
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(shards[:3], port, str(tmp_path), workers), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 5
    assert not set(seen[0]) & set(seen[1])
