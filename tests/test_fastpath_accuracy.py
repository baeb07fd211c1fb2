"""effvit-sam fastpath-accuracy: exact options measure as exact, lossy ones as lossy."""

from __future__ import annotations

import pytest
import torch

from effvit_sam import build_sam
from effvit_sam.tools.fastpath_accuracy import OPTION_SETS, main, markdown, measure


def test_measure_exact_and_lossy_options() -> None:
    torch.manual_seed(0)
    model = build_sam("efficientvit-sam-tiny").eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    results = {r.name: r for r in measure(model, x, ["fuse_epilogues", "fold_bn",
                                                     "quantize_decoder", "exact"])}
    exact = results["fuse_epilogues"]
    assert exact.embed_max_abs == 0 and exact.logit_max_abs == 0 and exact.iou_max_abs == 0
    assert exact.masks_equal == {"box": 1.0, "point": 1.0}
    fold = results["fold_bn"]
    assert 0 <= fold.embed_max_abs < 1e-4 and min(fold.masks_equal.values()) > 0.9999
    # exact(): the float32 fast path on every CPU (auto may be bf16 on AMX ones).
    assert results["exact"].embed_max_abs < 1e-4
    assert min(results["exact"].masks_equal.values()) > 0.9999
    lossy = results["quantize_decoder"]
    assert lossy.embed_max_abs < 1e-4  # the encoder is untouched
    assert lossy.logit_max_abs > 1e-3  # the int8 decoder is not exact
    table = markdown(list(results.values()))
    assert table.count("\n") == 6 and "| fuse_epilogues | 0.0e+00 | 0.0000% | 100.000% |" in table
    with pytest.raises(ValueError, match="unknown option sets"):
        measure(model, x, ["warp_speed"])
    assert set(OPTION_SETS) >= {"auto", "compile", "int8", "fuse_model", "winograd",
                                "gemm_pointwise", "fuse_neck"}


def test_command_prints_the_table(capsys) -> None:
    assert main(["--model", "tiny", "--options", "fuse_model", "channels_last"]) == 0
    out = capsys.readouterr().out
    assert ("efficientvit-sam-tiny, weights: random (no weights found, seed 0; masks are "
            "meaningless), image made scene") in out
    assert "| fuse_model |" in out and "| channels_last |" in out
