"""``effvit-sam bench`` on the tiny model: valid JSON, markdown and PNG; ratios computed right."""

from __future__ import annotations

import json
import mmap
import statistics
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from effvit_sam.tools.bench import PeakMemory, main, markdown_table, parse_args


def test_bench_writes_json_markdown_png(tmp_path: Path) -> None:
    argv = ["--model", "tiny", "--engines", "eager", "fused", "fast", "fast_direct", "onnx",
            "--sam",
            "--runs", "2", "--warmup", "1", "--batch", "2", "--prompts", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["config"]["model"] == "tiny" and report["config"]["threads"] == 2
    # No weights for tiny: random weights, allowed for timing, and said so in the report.
    assert report["config"]["weights"]["kind"] == "random"
    assert report["config"]["weights"]["description"].startswith("weights: random (no weights")
    # eager_kept: eager again once the fast path made the process keep freed memory.
    assert list(report["results"]) == ["eager", "fused", "fast", "fast_direct", "onnx",
                                       "eager_kept"]
    kept = report["results"]["eager_kept"]["encoder_latency_s_b1"]
    assert report["ratios"]["fast_direct_speedup_vs_eager_kept"] == pytest.approx(
        kept / report["results"]["fast_direct"]["encoder_latency_s_b1"])
    for name, row in report["results"].items():
        assert row["encoder_size"] == 256
        times = row["all_times_s"]
        assert len(times["encoder_b1"]) == 2, name
        # every figure is the median of its runs, in the unit it names
        assert row["encoder_latency_s_b1"] == statistics.median(times["encoder_b1"])
        assert row["encoder_images_per_s_b2"] == pytest.approx(
            2 / statistics.median(times["encoder_b2"]))
        assert row["end_to_end_s"] == statistics.median(times["end_to_end"])
        assert row["decoder_prompts_per_s_one_per_call"] == pytest.approx(
            2 / statistics.median(times["decode_one_per_call"]))
    assert "decoder_prompts_per_s_batched" not in report["results"]["onnx"]
    eager, fast = report["results"]["eager"], report["results"]["fast"]
    assert report["ratios"]["fast_speedup_vs_eager"] == pytest.approx(
        eager["encoder_latency_s_b1"] / fast["encoder_latency_s_b1"])
    table = (tmp_path / "bench.md").read_text()
    assert table == markdown_table(report)
    rows = [line for line in table.splitlines()
            if line.startswith(("| eager |", "| fused |", "| fast |", "| onnx |"))]
    assert len(rows) == 4
    assert "fused_speedup_vs_eager" in report["ratios"]
    kept = report["results"]["eager_kept"]
    assert report["ratios"]["fast_speedup_vs_eager_kept"] == pytest.approx(
        kept["encoder_latency_s_b1"] / fast["encoder_latency_s_b1"])
    with Image.open(tmp_path / "bench.png") as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100


def test_markdown_table_hand_made_report() -> None:
    row = {"encoder_latency_s_b1": 2.0, "encoder_images_per_s_b4": 0.5, "end_to_end_s": 2.5,
           "peak_encoder_memory_mb": 100.0}
    report = {"config": {"model": "l0", "device": "cpu", "threads": 2, "runs": 3, "batch": 4,
                         "torch": "x"},
              "results": {"eager": row, "fast": {**row, "encoder_latency_s_b1": 0.5}},
              "ratios": {"fast_speedup_vs_eager": 4.0}}
    table = markdown_table(report)
    assert "| fast | 0.500 | 4.00 | 0.50 | 2.500 | - | - | 100 |" in table
    assert "| fast_speedup_vs_eager | 4.00 |" in table


def test_peak_memory_sees_an_allocation() -> None:
    size = 64 * 2**20
    with PeakMemory(torch.device("cpu")) as mem:
        # A fresh anonymous mapping, every page touched: new resident memory whatever the heap
        # already holds (late in a test session malloc can reuse pages that are still resident).
        block = mmap.mmap(-1, size)
        block[::4096] = b"\x01" * (size // 4096)
        # Sampling: give the polling thread the GIL (and, under load, a few time slices)
        # while the block is alive.
        time.sleep(0.3)
        block.close()
    assert 40 < mem.peak_mb < 200


def test_bad_arguments(monkeypatch) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--runs", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--engines", "tensorrt"])
    args = parse_args(["--vit-h"])
    assert args.sam == ["sam_vit_b", "sam_vit_h"] and args.threads == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])


@pytest.mark.slow
def test_bench_int8_engine(tmp_path: Path) -> None:
    pytest.importorskip("torchao", reason="the int8 engine needs the 'quant' extra")
    argv = ["--model", "tiny", "--engines", "eager", "int8", "--sam", "--runs", "1",
            "--warmup", "1", "--batch", "1", "--prompts", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["results"]) == ["eager", "int8", "eager_kept"]
    int8 = report["results"]["int8"]
    assert int8["encoder_latency_s_b1"] == statistics.median(int8["all_times_s"]["encoder_b1"])
    assert report["ratios"]["int8_speedup_vs_eager"] == pytest.approx(
        report["results"]["eager"]["encoder_latency_s_b1"] / int8["encoder_latency_s_b1"])
    assert "int8_speedup_vs_eager_kept" in report["ratios"]
    with pytest.raises(SystemExit):
        parse_args(["--engines", "int8", "--device", "meta"])


def test_bench_bf16_engine_is_the_bf16_fast_path(tmp_path: Path) -> None:
    """The bf16 row times FastPathOptions.bf16(): its embeddings differ from eager float32 by
    bf16 rounding (not zero, well under 5%), and its ratio is computed like the others'."""
    import numpy as np

    from effvit_sam.tools.bench import _build_engines
    from effvit_sam.weights import resolve_model

    argv = ["--model", "tiny", "--engines", "eager", "bf16", "--sam", "--runs", "1",
            "--warmup", "1", "--batch", "1", "--prompts", "1", "--out", str(tmp_path)]
    args = parse_args(argv)
    model, _ = resolve_model("tiny", checkpoint=None, random_weights=True, require_weights=False)
    engines = {e.name: e for e in _build_engines(args, model, torch.device("cpu"), tmp_path)}
    assert engines["bf16"].keeps_memory and not engines["eager"].keeps_memory
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    ref, got = engines["eager"].encode(x).float(), engines["bf16"].encode(x).float()
    rel = float((got - ref).norm() / ref.norm())
    assert 1e-5 < rel < 5e-2
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert list(report["results"]) == ["eager", "bf16", "eager_kept"]
    assert report["ratios"]["bf16_speedup_vs_eager"] == pytest.approx(
        report["results"]["eager"]["encoder_latency_s_b1"]
        / report["results"]["bf16"]["encoder_latency_s_b1"])
