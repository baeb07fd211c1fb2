"""The report of ``effvit-sam bench``: medians and ratios, a markdown table, a bar chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch

from ..inference.cpu_features import detect_cpu_features
from ..io import atomic_write

KEPT_MEMORY_ENGINES = ("fast", "exact", "fast_direct", "compiled", "bf16", "int8")
SAM_BASELINES = ("sam_vit_b", "sam_vit_h")


def summarise(args, engines: list, device: torch.device, *,
              weights: dict | None = None) -> dict:
    """Medians per engine and task, and every engine's ratio to eager (and to SAM's).

    ``weights``: :meth:`effvit_sam.weights.WeightsInfo.to_dict` of the model timed.
    """
    results = {}
    for e in engines:
        med = {k: statistics.median(v) for k, v in e.times.items()}
        batch_key = f"encoder_b{args.batch}"
        row = {"setup_s": e.setup_s, "encoder_size": e.encoder_size,
               "encoder_latency_s_b1": med["encoder_b1"],
               f"encoder_images_per_s_b{args.batch}": args.batch / med[batch_key]
               if batch_key in med else None,
               "end_to_end_s": med.get("end_to_end"),
               "peak_encoder_memory_mb": e.peak_mb.get(batch_key, e.peak_mb.get("encoder_b1", 0.0)),
               "all_times_s": e.times}
        if "decode_one_per_call" in med:
            row["decoder_prompts_per_s_one_per_call"] = args.prompts / med["decode_one_per_call"]
        if "decode_batched" in med:
            row["decoder_prompts_per_s_batched"] = args.prompts / med["decode_batched"]
        results[e.name] = row
    ratios = {}
    base = results.get("eager")
    kept = results.get("eager_kept")
    for name, row in results.items():
        if base is not None and name not in ("eager", *SAM_BASELINES):
            ratios[f"{name}_speedup_vs_eager"] = (base["encoder_latency_s_b1"]
                                                  / row["encoder_latency_s_b1"])
        if kept is not None and name in KEPT_MEMORY_ENGINES:
            # The code's own gain, with the allocator gain taken out.
            ratios[f"{name}_speedup_vs_eager_kept"] = (kept["encoder_latency_s_b1"]
                                                       / row["encoder_latency_s_b1"])
        for sam in SAM_BASELINES:
            if sam in results and name not in SAM_BASELINES:
                ratios[f"{name}_speedup_vs_{sam}"] = (results[sam]["encoder_latency_s_b1"]
                                                      / row["encoder_latency_s_b1"])
    return {
        "config": {"model": args.model, "weights": weights, "device": str(device),
                   "threads": args.threads,
                   "batch": args.batch, "runs": args.runs, "warmup": args.warmup,
                   "prompts": args.prompts, "engines": args.engines, "sam": args.sam,
                   "torch": torch.__version__, "machine": platform.processor() or
                   platform.machine(), "cpus": os.cpu_count(),
                   "cpu_features": detect_cpu_features().summary()},
        "results": results,
        "ratios": ratios,
    }


def markdown_table(report: dict) -> str:
    """The report as a markdown table: one row per engine, medians and ratios to eager."""
    cfg = report["config"]
    b = cfg["batch"]
    lines = [f"Model `{cfg['model']}` on {cfg['device']}, {cfg['threads']} threads, median of "
             f"{cfg['runs']} interleaved runs (torch {cfg['torch']}).",
             *([f"CPU: {cfg['cpu_features']}"] if "cpu_features" in cfg else []), "",
             f"| engine | encoder b1 (s) | x eager | encoder b{b} (img/s) | end-to-end (s) | "
             "decoder 1/call (prompts/s) | decoder batched (prompts/s) | peak mem (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    eager = report["results"].get("eager")

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    for name, r in report["results"].items():
        speed = eager["encoder_latency_s_b1"] / r["encoder_latency_s_b1"] if eager else None
        lines.append(
            f"| {name} | {fmt(r['encoder_latency_s_b1'])} | {fmt(speed, '.2f')} | "
            f"{fmt(r[f'encoder_images_per_s_b{b}'], '.2f')} | {fmt(r['end_to_end_s'])} | "
            f"{fmt(r.get('decoder_prompts_per_s_one_per_call'), '.1f')} | "
            f"{fmt(r.get('decoder_prompts_per_s_batched'), '.1f')} | "
            f"{fmt(r['peak_encoder_memory_mb'], '.0f')} |")
    if report["ratios"]:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, path: Path) -> None:
    """Encoder batch-1 latency per engine as a PNG bar chart (matplotlib Agg, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["encoder_latency_s_b1"] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, [f"{v:.3g}s" for v in values])
    ax.set_yscale("log")
    ax.set_ylabel("encoder latency, batch 1 (s)")
    cfg = report["config"]
    ax.set_title(f"{cfg['model']} on {cfg['device']} ({cfg['threads']} threads)")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def write_report(report: dict, out: Path) -> dict[str, Path]:
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "png": out / "bench.png"}
    atomic_write(paths["json"], lambda p: Path(p).write_text(json.dumps(report, indent=2)))
    atomic_write(paths["markdown"], lambda p: Path(p).write_text(markdown_table(report)))
    bar_chart(report, paths["png"])
    return paths
