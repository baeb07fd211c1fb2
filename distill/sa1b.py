"""SA-1B tar shards as a PyTorch ``IterableDataset`` for distillation and fine-tuning.

Each SA-1B sample is a ``sa_<id>.jpg`` + ``sa_<id>.json`` pair in a tar shard (see
:mod:`distill.synthetic_writers` for the exact layout). :func:`sa1b_dataset` yields, per image:

* ``key``: the sample's stem, e.g. ``"sa_42"``;
* ``image``: float32 ``3 x S x S`` encoder input (``geometry.preprocess_image``);
* ``masks``: bool ``K x M x M`` in the decoder's low-res prompt frame
  (``geometry.mask_to_low_res``; ``M = mask_size``, 256 for a 64 x 64 embedding, four times the
  embedding side in general), ``1 <= K <= max_masks``, sampled without replacement by a
  generator seeded from ``(seed, epoch, key)``; annotations too small to survive the reduction
  to M x M are passed over;
* ``boxes``: float32 ``K x 4`` XYXY in the 1024 prompt frame, from each RLE's pixel extent
  (``x0, y0, x0 + w, y0 + h`` in the original frame, the COCO ``bbox`` convention);
* ``original_size`` ``(H, W)``, ``input_size`` ``(h, w)`` (prompt frame);
* ``image_raw`` (with ``keep_raw=True``): uint8 ``3 x H x W``, for a teacher that preprocesses
  itself;
* ``skip_counts`` and ``stream_id``: the running skip counts of the (rank, worker) stream that
  produced the sample (see :class:`SkipStats`).

Each annotation's RLE is checked (:func:`effvit_sam.masks.validate_rle`) before any decode; a
bad one is passed over and counted (``bad_rle``), the image's other masks kept.

Splitting across ranks and DataLoader workers is explicit; see :class:`SA1BDataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from effvit_sam.geometry import (
    LOW_RES_MASK_SIZE,
    PROMPT_FRAME,
    apply_boxes,
    mask_to_low_res,
    preprocess_image,
    preprocess_shape,
)
from effvit_sam.masks import rle_to_box_xywh, rles_to_masks, validate_rle

from .skip_log import (  # noqa: F401  (the reader's skip vocabulary, also public here)
    ANNOTATION_SKIP_REASONS,
    COUNTED_REASONS,
    SKIP_REASONS,
    SkipStats,
    stamped_last,
)

logger = logging.getLogger(__name__)


MASK_CHUNK = 8  # masks reduced to low-res at a time: bounds memory on 1500 x 2250 photos
RESAMPLED_PASS = 32  # shard draws per resampled pass (the unit of the empty-data check)
MAX_EMPTY_RESAMPLED_PASSES = 4


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _expand(urls: str | list[str]) -> list[str]:
    """Brace- and ``::``-expand shard urls the way webdataset does."""
    from webdataset.shardlists import expand_urls

    items = [urls] if isinstance(urls, str) else list(urls)
    expanded = [u for item in items for u in expand_urls(item)]
    if not expanded:
        raise ValueError(f"no shards in {urls!r}")
    return expanded


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else ``torch.distributed`` if initialised, else env RANK / WORLD_SIZE."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank = int(os.environ.get("RANK", 0))
            world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return rank, world_size


def _stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` that does not depend on Python's hash randomisation."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def decode_sample(raw: dict, *, encoder_size: int, max_masks: int, seed: int, epoch: int = 0,
                  keep_raw: bool = False, skip_counts: Counter | None = None,
                  mask_size: int = LOW_RES_MASK_SIZE) -> dict:
    """Turn one raw webdataset sample (``__key__``, ``jpg``, ``json`` bytes) into a training
    sample (fields in the module docstring). Raises :class:`SkipSample` on unusable data.

    Annotations passed over (:data:`ANNOTATION_SKIP_REASONS`) are added to ``skip_counts``,
    also when the sample is then skipped.
    """
    key = PurePosixPath(raw.get("__key__", "?")).name
    if "jpg" not in raw or "json" not in raw:
        raise SkipSample("missing_member", f"{key} has members {sorted(raw)}")
    # The json first: it is cheap, and an image without masks need not be decoded.
    try:
        record = json.loads(raw["json"])
        anns = [a for a in record["annotations"] if a["area"] > 0]
        meta = record.get("image", {})
        stated = (meta.get("height"), meta.get("width"))
    except (ValueError, KeyError, TypeError, AttributeError) as exn:
        raise SkipSample("bad_json", f"{key}: {exn!r}") from exn
    if not anns:
        raise SkipSample("no_annotations", f"{key} has no non-empty annotation")
    try:
        with Image.open(io.BytesIO(raw["jpg"])) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exn:  # PIL raises many types on corrupt or truncated data
        raise SkipSample("bad_image", f"{key}: {exn}") from exn
    height, width = rgb.shape[:2]
    if stated != (None, None) and stated != (height, width):
        raise SkipSample("size_mismatch", f"{key}: json says {stated[0]}x{stated[1]}, jpg is "
                         f"{height}x{width}")
    rles = _checked_rles(key, anns, height, width, skip_counts)
    generator = torch.Generator().manual_seed(_stable_seed(seed, epoch, key))
    order = torch.randperm(len(rles), generator=generator).tolist()
    masks, boxes, start, found = [], [], 0, 0
    while start < len(order) and found < max_masks:
        # Decode only about as many masks as are still needed (most survive the reduction).
        chunk = order[start: start + min(MASK_CHUNK, max_masks - found)]
        start += len(chunk)
        chosen = [rles[i] for i in chunk]
        full = rles_to_masks(chosen, height, width)  # k x H x W
        xywh = np.array([rle_to_box_xywh(rle) for rle in chosen]).reshape(-1, 4)
        low = mask_to_low_res(full, low_res=mask_size)
        keep = low.flatten(1).any(1)  # masks too small for M x M give no training signal
        masks.append(low[keep])
        boxes.append(torch.from_numpy(xywh)[keep])
        found += int(keep.sum())
    masks_t = torch.cat(masks)[:max_masks]
    if len(masks_t) == 0:
        raise SkipSample("no_annotations", f"{key}: every mask vanishes at {mask_size} x "
                          f"{mask_size}")
    xywh = torch.cat(boxes)[:max_masks].double()
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).numpy()
    sample = {
        "key": key,
        "image": preprocess_image(rgb, encoder_size)[0],
        "masks": masks_t,
        "boxes": torch.from_numpy(apply_boxes(xyxy, (height, width))).float(),
        "original_size": (height, width),
        "input_size": preprocess_shape(height, width, PROMPT_FRAME),
    }
    if keep_raw:
        sample["image_raw"] = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    return sample


def _checked_rles(key: str, anns: list[dict], height: int, width: int,
                  skip_counts: Counter | None) -> list[dict]:
    """The RLEs that pass :func:`validate_rle` for an ``height x width`` image, in annotation
    order; the others are counted as ``bad_rle`` and logged once per sample. Raises
    ``size_mismatch`` when no RLE has the image's size (the json of another image: nothing is
    counted) and ``no_annotations`` when every annotation is bad."""
    sizes = [seg.get("size") if isinstance(seg := ann.get("segmentation"), dict) else None
             for ann in anns]
    if all(isinstance(size, list) and size != [height, width] for size in sizes):
        raise SkipSample("size_mismatch", f"{key}: RLE sizes {sorted(set(map(str, sizes)))} "
                         f"but the jpg is {height}x{width}")
    rles, errors = [], []
    for ann in anns:
        try:
            rles.append(validate_rle(ann["segmentation"], height, width))
        except (KeyError, TypeError, ValueError) as exn:
            errors.append(exn)
    if errors:
        if skip_counts is not None:
            skip_counts["bad_rle"] += len(errors)
        logger.warning("SA-1B sample %s: passing over %d of %d annotations with a bad RLE "
                       "(first: %r)", key, len(errors), len(anns), str(errors[0]))
    if not rles:
        raise SkipSample("no_annotations", f"{key}: every annotation's RLE is bad (first: "
                         f"{errors[0]})")
    return rles


class SA1BDataset(IterableDataset):
    """SA-1B shards split across ranks and DataLoader workers; see :func:`sa1b_dataset`.

    Splitting: rank ``r`` of ``W`` owns shards ``r, r + W, ...``; within a rank, worker ``i``
    of ``N`` owns every ``N``-th of those shards, or, when the rank has fewer shards than
    workers, every ``N``-th sample of them. So no two streams share a sample.

    * ``resampled=True``: each stream draws its shards with replacement from its own seeded RNG,
      forever, and stops after its share of ``epoch_length`` (required) samples: every rank
      yields exactly ``epoch_length`` samples, whatever the shard sizes (no DDP hang).
    * ``resampled=False`` with ``epoch_length``: each stream cycles over its shards until it
      has its share, so again every rank yields exactly ``epoch_length``.
    * ``resampled=False`` without ``epoch_length``: one pass over the rank's shards. Ranks then
      yield different numbers of samples unless their shards hold equally many; use this for
      single-process passes (evaluation, teacher caching), not for DDP training.

    Call :meth:`set_epoch` before each epoch to reshuffle and resample masks. Construct it after
    ``torch.distributed`` is initialised (or pass ``rank`` / ``world_size``).
    """

    def __init__(self, urls: str | list[str], *, encoder_size: int, max_masks: int,
                 seed: int = 0, resampled: bool = False, epoch_length: int | None = None,
                 shuffle_buffer: int = 0, keep_raw: bool = False, rank: int | None = None,
                 world_size: int | None = None, mask_size: int = LOW_RES_MASK_SIZE) -> None:
        super().__init__()
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        if mask_size < 1:
            raise ValueError(f"mask_size must be >= 1, got {mask_size}")
        if encoder_size < 1:
            raise ValueError(f"encoder_size must be >= 1, got {encoder_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        if resampled and epoch_length is None:
            raise ValueError("resampled=True streams forever; give epoch_length per rank")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.urls = _expand(urls)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.encoder_size, self.max_masks, self.seed = encoder_size, max_masks, seed
        self.resampled, self.epoch_length = resampled, epoch_length
        self.shuffle_buffer, self.keep_raw = shuffle_buffer, keep_raw
        self.mask_size = mask_size
        self.epoch = 0
        if len(self.urls) < self.world_size:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {self.world_size} "
                             "ranks; give at least one shard per rank")
        if len(self.urls) % self.world_size and epoch_length is None:
            logger.warning("%d shards over %d ranks: ranks get unequal shard counts; pass "
                           "epoch_length to equalise them", len(self.urls), self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (only defined with ``epoch_length``)."""
        if self.epoch_length is None:
            raise TypeError("length is unknown without epoch_length")
        return self.epoch_length

    def _stream_plan(self) -> tuple[list[str], int, int, int | None, int]:
        """This stream's shards, sample stride and offset, quota and worker id."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.urls[self.rank:: self.world_size]
        if len(shards) >= workers:
            shards, stride, offset = shards[worker::workers], 1, 0
        else:
            stride, offset = workers, worker
        quota = None
        if self.epoch_length is not None:
            quota = self.epoch_length // workers + (worker < self.epoch_length % workers)
        return shards, stride, offset, quota, worker

    def __iter__(self) -> Iterator[dict]:
        counts = Counter({reason: 0 for reason in COUNTED_REASONS})
        yield from stamped_last(self._stream(counts), counts)

    def _stream(self, counts: Counter) -> Iterator[dict]:
        shards, stride, offset, quota, worker = self._stream_plan()
        # Streams that split samples by stride must read the same shard sequence; streams with
        # their own shards draw their own.
        order_rng = random.Random(_stable_seed(self.seed, self.epoch, self.rank,
                                               worker if stride == 1 else "all"))
        shuffle_rng = random.Random(_stable_seed(self.seed, self.epoch, self.rank, worker))
        stream_id = uuid.uuid4().hex  # identifies this stream's running counts, not data
        produced, empty_passes = 0, 0
        while quota != 0:
            produced_before = produced
            for item in self._one_pass(shards, stride, offset, order_rng, shuffle_rng, counts):
                try:
                    sample = decode_sample(item, encoder_size=self.encoder_size,
                                           max_masks=self.max_masks, seed=self.seed,
                                           epoch=self.epoch, keep_raw=self.keep_raw,
                                           skip_counts=counts, mask_size=self.mask_size)
                except SkipSample as skip:
                    counts[skip.reason] += 1
                    logger.warning("skipping SA-1B sample (%s)", skip)
                    continue
                sample["stream_id"] = stream_id  # skip_counts: stamped by stamped_last
                yield sample
                produced += 1
                if quota is not None and produced >= quota:
                    break
            if quota is None or produced >= quota:
                break
            # Cycling or resampling towards the quota; stop if the data yields nothing at all
            # (resampling gets a few tries, as its random draws may miss the good shards).
            empty_passes = empty_passes + 1 if produced == produced_before else 0
            if empty_passes >= (MAX_EMPTY_RESAMPLED_PASSES if self.resampled else 1):
                logger.warning("rank %d worker %d: shards gave only %d of %d samples",
                               self.rank, worker, produced, quota)
                break
        if sum(counts.values()):
            logger.info("rank %d worker %d skipped %s", self.rank, worker, dict(counts))

    def _one_pass(self, shards: list[str], stride: int, offset: int, order_rng: random.Random,
                  shuffle_rng: random.Random, counts: Counter) -> Iterator[dict]:
        """Raw samples of one pass: this stream's shards in a shuffled order, or (resampled) as
        many random draws with replacement; every ``stride``-th sample from ``offset``."""
        from webdataset.tariterators import tarfile_samples

        def on_error(exn: Exception) -> bool:
            counts["shard_error"] += 1
            logger.warning("skipping corrupt or unreadable shard data: %r", exn)
            return True  # keep going with the next member or shard

        if self.resampled:
            urls = [order_rng.choice(shards) for _ in range(max(len(shards), RESAMPLED_PASS))]
        else:
            urls = list(shards)
            if self.shuffle_buffer > 1:
                order_rng.shuffle(urls)
        raw = tarfile_samples(({"url": url} for url in urls), handler=on_error)
        raw = (s for i, s in enumerate(raw) if i % stride == offset)
        if self.shuffle_buffer > 1:
            raw = _shuffled(raw, self.shuffle_buffer, shuffle_rng)
        yield from raw


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Shuffle a stream through a buffer of ``size`` items (raw bytes, so it stays small)."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def sa1b_dataset(urls: str | list[str], *, encoder_size: int, max_masks: int, seed: int = 0,
                 resampled: bool = False, epoch_length: int | None = None,
                 shuffle_buffer: int = 0, keep_raw: bool = False, rank: int | None = None,
                 world_size: int | None = None,
                 mask_size: int = LOW_RES_MASK_SIZE) -> SA1BDataset:
    """SA-1B shards (local paths, brace patterns, ``pipe:`` or http urls) as a dataset.

    ``mask_size``: the side of the low-res target masks, the model's ``4 x`` embedding side
    (``prompt_encoder.mask_input_size``). ``epoch_length`` is per rank. ``rank`` /
    ``world_size`` default to ``torch.distributed`` or the RANK / WORLD_SIZE environment.
    Splitting and lengths: see :class:`SA1BDataset`.
    """
    return SA1BDataset(urls, encoder_size=encoder_size, max_masks=max_masks, seed=seed,
                       resampled=resampled, epoch_length=epoch_length,
                       shuffle_buffer=shuffle_buffer, keep_raw=keep_raw, rank=rank,
                       world_size=world_size, mask_size=mask_size)


def collate_sa1b(samples: list[dict]) -> dict:
    """``image`` stacked to ``B x 3 x S x S`` (and nothing else); every other field a list."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch = {name: [s[name] for s in samples] for name in samples[0]}
    batch["image"] = torch.stack(batch["image"])
    return batch
