"""Teacher-embedding cache: SA-1B shards re-written with each sample's fp16 teacher embedding.

A cache shard holds, for every sample of its source shard and under the same key, the source
files byte for byte (``jpg``, ``json``, ...) plus ``emb.npy``: the teacher's ``C x 64 x 64``
embedding in float16. Phase 1 then reads images and targets from the cache instead of running a
multi-TFLOP teacher every epoch. ``cache.json`` in the output folder names the teacher.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from effvit_sam.errors import UserError
from effvit_sam.geometry import preprocess_image
from effvit_sam.io import atomic_write

from .teacher import Teacher

log = logging.getLogger(__name__)
EMBED_FIELD = "emb.npy"
MANIFEST = "cache.json"


def checked_shards(pattern: str, what: str) -> list[str]:
    """:func:`expand_urls`, refusing a pattern of local paths none of which is a file (a typo
    would otherwise read as corrupt data: every shard skipped, no sample); missing ones among
    existing ones are logged and left to the reader, which skips and counts them."""
    urls = expand_urls(pattern)
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing and len(missing) == len(urls):
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{what} {pattern}: no such file: {missing[0]}{more}")
    if missing:
        log.warning("%s: %d of %d shards are missing (first: %s)", what, len(missing), len(urls),
                    missing[0])
    return urls


def expand_urls(pattern: str) -> list[str]:
    """Brace-expand a shard pattern (``a_{000..009}.tar``); ``::`` separates several patterns."""
    import braceexpand

    return [url for part in pattern.split("::") for url in braceexpand.braceexpand(part)]


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a webdataset tar, in file order.

    Follows webdataset's convention: the key is the member path up to the first dot of its
    basename, the extension is the rest.
    """
    current, files = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if current is not None and key != current:
                yield current, files
                files = {}
            current = key
            files[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, files


def decode_rgb(jpg: bytes) -> np.ndarray:
    """Image bytes to an ``H x W x 3`` uint8 RGB array."""
    with Image.open(io.BytesIO(jpg)) as image:
        return np.asarray(image.convert("RGB"))


def _write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o444
                tar.addfile(info, io.BytesIO(data))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def cache_shard(teacher: Teacher, source: str | Path, target: str | Path, *,
                batch_size: int = 4) -> tuple[int, int]:
    """Write ``target``: ``source``'s samples plus fp16 ``emb.npy``; returns ``(kept, bad)``.

    A sample whose image cannot be decoded is skipped, counted and logged. The shard is
    written atomically.
    """
    kept: list[tuple[str, dict[str, bytes]]] = []
    bad = 0
    pending: list[tuple[str, dict[str, bytes], np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        embeddings = teacher([image for _, _, image in pending]).cpu().half().numpy()
        for (key, files, _), emb in zip(pending, embeddings, strict=True):
            kept.append((key, {**files, EMBED_FIELD: _npy_bytes(emb)}))
        pending.clear()

    for key, files in iter_tar_samples(source):
        image_ext = next((e for e in ("jpg", "jpeg", "png") if e in files), None)
        try:
            if image_ext is None:
                raise ValueError(f"no image among {sorted(files)}")
            image = decode_rgb(files[image_ext])
        except Exception as err:  # a corrupt sample must not end a long caching run
            bad += 1
            log.warning("skipping sample %s of %s: %s", key, source, err)
            continue
        pending.append((key, files, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    atomic_write(target, lambda tmp: _write_tar(tmp, kept))
    return len(kept), bad


def cache_teacher(teacher: Teacher, shards: list[str], out_dir: str | Path, *,
                  batch_size: int = 4, rank: int = 0, world_size: int = 1) -> dict:
    """Cache every shard (this rank's share: ``shards[rank::world_size]``) into ``out_dir``.

    Cache shards keep their source file names, so ``data.cache`` is the same pattern with
    another folder. Returns counts ``{"shards", "samples", "bad"}``.
    """
    out_dir = Path(out_dir)
    mine = shards[rank::world_size]
    counts = {"shards": 0, "samples": 0, "bad": 0}
    for source in tqdm(mine, desc="cache-teacher", disable=rank != 0):
        kept, bad = cache_shard(teacher, source, out_dir / Path(source).name,
                                batch_size=batch_size)
        counts["shards"] += 1
        counts["samples"] += kept
        counts["bad"] += bad
    if rank == 0:
        manifest = {"teacher": teacher.name, "teacher_input_size": teacher.input_size,
                    "dtype": "float16", "field": EMBED_FIELD, "sources": shards}
        atomic_write(out_dir / MANIFEST,
                     lambda p: Path(p).write_text(json.dumps(manifest, indent=2)))
    return counts


def decode_cached(sample: dict, encoder_size: int) -> dict:
    """A raw cache sample to ``{"key", "image" 3xSxS, "teacher_embedding" C x 64 x 64 fp16}``.

    The student input is :func:`effvit_sam.geometry.preprocess_image` of the stored image, the
    same function the SA-1B reader uses, so cache and live runs see the same pixels.
    """
    image_ext = next(e for e in ("jpg", "jpeg", "png") if e in sample)
    image = decode_rgb(sample[image_ext])
    emb = np.load(io.BytesIO(sample[EMBED_FIELD]))
    return {"key": sample["__key__"], "image": preprocess_image(image, encoder_size)[0],
            "teacher_embedding": torch.from_numpy(emb)}


class _BadSampleCounter:
    """A webdataset handler that logs, counts and skips a bad sample."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        log.warning("skipping a bad cache sample (%d so far): %s", self.count, exn)
        return True


def cached_dataset(urls: str | list[str], *, encoder_size: int, seed: int = 0,
                   resampled: bool = False, epoch_length: int | None = None,
                   shuffle_buffer: int = 0):
    """Phase-1 samples from cache shards, split across ranks and DataLoader workers.

    Without ``resampled`` each rank reads its own shards (``shards[rank::world]``), then each
    worker its share of those; give every rank the same number of samples (or set
    ``resampled`` + ``epoch_length``) so distributed ranks take the same number of steps.
    """
    import webdataset as wds

    urls = expand_urls(urls) if isinstance(urls, str) else list(urls)
    handler = _BadSampleCounter()
    if resampled:
        source = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        source = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    stages = [*source, wds.tarfile_to_samples(handler=handler)]
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, seed=seed))
    stages.append(wds.map(lambda s: decode_cached(s, encoder_size), handler=handler))
    pipeline = wds.DataPipeline(*stages)
    pipeline.bad_samples = handler
    return pipeline.with_epoch(epoch_length) if epoch_length else pipeline


def collate_cached(samples: list[dict]) -> dict:
    return {"key": [s["key"] for s in samples],
            "image": torch.stack([s["image"] for s in samples]),
            "teacher_embedding": torch.stack([s["teacher_embedding"] for s in samples])}
