"""The training log's data-skip totals: a phase-2 run of the tiny model on a made shard with a
corrupt image and a too-short RLE logs the SA-1B reader's counts at each log step and at the
end, writes them to ``skips.json``, gets the same totals after a kill and ``--resume``, and sums
them over ranks.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from distill.config import load_config
from distill.phase2 import FinetuneStep
from distill.run import run
from distill.sa1b import COUNTED_REASONS
from distill.skip_log import RunSkips, describe, sum_totals
from distill.synthetic_writers import write_sa1b_shards

pytestmark = pytest.mark.usefixtures("one_thread")
EXPECTED = {"step": 3,
            "samples": {"shard_error": 0, "missing_member": 0, "bad_image": 2, "bad_json": 0,
                        "no_annotations": 0, "size_mismatch": 0},
            "annotations": {"bad_rle": 1}}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def dirty_shard(tmp_path_factory) -> str:
    """Three good samples with, after the first and after the last, one whose jpg is garbage
    and, in the second, an extra annotation whose RLE is too short for its size
    (``"counts": "0"``)."""
    made = write_sa1b_shards(tmp_path_factory.mktemp("made"), num_shards=1, images_per_shard=3,
                             seed=0, image_size=64)[0]
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(made) as tar:
        for m in tar.getmembers():
            stem, ext = m.name.rsplit(".", 1)
            members.setdefault(stem, {})[ext] = tar.extractfile(m).read()
    stems = list(members)
    record = json.loads(members[stems[1]]["json"])
    first = record["annotations"][0]
    short = {**first, "id": 9001, "area": 50,
             "segmentation": {"size": first["segmentation"]["size"], "counts": "0"}}
    record["annotations"].insert(0, short)
    members[stems[1]]["json"] = json.dumps(record).encode()
    path = tmp_path_factory.mktemp("dirty") / "sa_000000.tar"
    with tarfile.open(path, "w") as tar:
        for i, stem in enumerate(stems):
            for ext in ("jpg", "json"):
                _add(tar, f"{stem}.{ext}", members[stem][ext])
            if i in (0, 2):
                _add(tar, f"sa_90{i}.jpg", b"not a jpeg")
                _add(tar, f"sa_90{i}.json", members[stem]["json"])
    return str(path)


def _cfg(shard: str, out: Path):
    return load_config("smoke_phase2", [f"data.shards={shard}", "data.batch_size=1",
                                        "data.max_masks=2", "prompts.iterative_rounds=1",
                                        "train.steps=3", "run.log_every=1", "run.save_every=1",
                                        f"run.out_dir={out}"])


def _step_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "distill.engine" and r.getMessage().startswith("step ")]


def test_skip_totals_are_logged_each_log_step_and_written_to_skips_json(dirty_shard, tmp_path,
                                                                       caplog) -> None:
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        run(_cfg(dirty_shard, out))
    lines = _step_lines(caplog)
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    # a sample is passed on once the next one is decoded, with the counts read by then: the
    # first carries the corrupt jpg after it and the second's short RLE; the last, the corrupt
    # jpg at the end of the shard (read after it, before the stream ends)
    assert lines[0].endswith("| data skipped: bad_image=1 bad_rle=1")
    assert lines[1].endswith("| data skipped: bad_image=1 bad_rle=1")
    assert lines[2].endswith("| data skipped: bad_image=2 bad_rle=1")
    final = [r for r in caplog.records if r.getMessage().startswith("data skipped over the run")]
    assert len(final) == 1 and final[0].levelno == logging.WARNING
    assert final[0].getMessage() == (f"data skipped over the run (all ranks): bad_image=2 "
                                     f"bad_rle=1 (see {out / 'skips.json'})")
    assert json.loads((out / "skips.json").read_text()) == EXPECTED


def test_skip_totals_after_a_kill_and_resume_equal_the_uninterrupted_run(dirty_shard, tmp_path,
                                                                        monkeypatch) -> None:
    out = tmp_path / "run"
    original, calls = FinetuneStep.forward, []

    def forward(self, batch, generator=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(self, batch, generator)

    monkeypatch.setattr(FinetuneStep, "forward", forward)
    with pytest.raises(RuntimeError, match="killed"):
        run(_cfg(dirty_shard, out))
    assert json.loads((out / "skips.json").read_text())["step"] == 2
    monkeypatch.undo()
    run(_cfg(dirty_shard, out), resume="auto")  # steps 1-2 replayed (their counts included)
    assert json.loads((out / "skips.json").read_text()) == EXPECTED


class _FakeAccelerator:
    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes


def test_totals_are_summed_over_ranks(monkeypatch) -> None:
    import accelerate.utils

    other_rank = {**dict.fromkeys(COUNTED_REASONS, 0), "bad_json": 2, "bad_rle": 5}
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda local: [*local, other_rank])
    skips = RunSkips()
    zero = dict.fromkeys(COUNTED_REASONS, 0)
    skips.update({"key": ["a"], "stream_id": ["s0"],
                  "skip_counts": [{**zero, "bad_image": 1, "bad_rle": 1}]})
    skips.update({"key": ["b"], "stream_id": ["s1"], "skip_counts": [{**zero, "bad_rle": 2}]})
    totals = skips.gather(_FakeAccelerator(2))
    assert totals == {**zero, "bad_image": 1, "bad_json": 2, "bad_rle": 8}
    assert describe(totals) == "bad_image=1 bad_json=2 bad_rle=8"
    # a rank whose data carries no counts (the embedding cache) adds nothing; none at all: None
    assert sum_totals([None, other_rank]) == other_rank
    assert sum_totals([None, None]) is None
    cached = RunSkips()
    cached.update({"key": ["c"], "image": None})
    assert cached.gather(_FakeAccelerator(1)) is None
