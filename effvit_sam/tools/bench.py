"""``effvit-sam bench``: speed and memory of our engines against SAM's, reported as ratios.

Engines, all in one process on the same weights and inputs:

* ``eager`` - the model as built: float32 eager PyTorch, the official computation;
* ``fused`` - :func:`effvit_sam.fuse_model`: BatchNorm folded, activations and residual adds in
  place; nothing else (opt-in: ``--engines``);
* ``fast`` - :func:`effvit_sam.inference.optimize_for_inference` with ``FastPathOptions.auto``
  (a bf16 encoder on AMX and AVX512-BF16 CPUs, float32 elsewhere);
* ``exact`` - ``FastPathOptions.exact()``: the fast path in float32 only (the same as ``fast``
  except where ``auto`` is bf16; opt-in);
* ``fast_direct`` - the fast path with oneDNN's own convolutions, the reference neck and
  PyTorch's GELU (``winograd``, ``gemm_pointwise``, ``fuse_neck`` and ``compiled_gelu`` off),
  to show what those add (opt-in);
* ``compiled`` - the fast path plus ``torch.compile`` (inductor, weight freezing on CPU);
* ``bf16`` - ``FastPathOptions.bf16()``: the fast path under bf16 autocast (lossy, opt-in; on
  CPUs without AMX-BF16 or AVX512-BF16 oneDNN emulates bf16, which is slower);
* ``int8`` - the compiled fast path with a static int8 encoder (CPU, ``torchao``; calibrated on
  random inputs, which is fine for timing and says nothing of accuracy; opt-in: ``--engines``);
* ``eager_kept`` - the eager model again, timed after the fast path has made the process keep
  freed memory (:mod:`effvit_sam.inference.cpu_memory`), to separate that gain from the code's;
* ``onnx`` - the exported graphs in onnxruntime (``onnx_predictor.OnnxSamPredictor``);
* ``sam_vit_b`` / ``sam_vit_h`` - ``segment_anything``'s encoders with random weights.

Runs are interleaved (run r of every engine, then run r + 1), so load from other processes
hits every engine alike; each figure is the median of ``--runs`` runs after ``--warmup``.
On CPU the fast path keeps freed memory for reuse, a process-wide setting that cannot be undone,
so the engines run in two groups: first those that use the default allocator (eager, fused,
onnx, SAM's), then the fast path ones and ``eager_kept``. Ratios ``x_vs_eager`` compare with
eager under the default allocator, what a user of the official code has.
Writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``--out``.

Weights (:func:`effvit_sam.weights.resolve_model`): ``--checkpoint PATH``, else the official
file of ``--model`` in the local Hugging Face cache, else the bundled model of that name, else
random weights (seed 0) - allowed here because weights do not change timings; the weights used
are printed and recorded in ``bench.json`` (``config.weights``). ``--random-weights`` skips the
search.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..inference.cpu_memory import keep_freed_memory
from .bench_report import (
    SAM_BASELINES,
    markdown_table,
    summarise,
    write_report,
)

log = logging.getLogger(__name__)

ENGINES = ("eager", "fused", "fast", "exact", "fast_direct", "compiled", "bf16", "int8", "onnx")
IMAGE_SIZE = (480, 640)  # the end-to-end image, H x W
RSS_POLL_S = 0.002


@dataclass
class Engine:
    """One thing to time: an encoder call, a predictor for end-to-end, optional decoder calls."""

    name: str
    encode: Callable[[np.ndarray], object]  # B x 3 x S x S float32 numpy in
    predictor: object
    encoder_size: int
    setup_s: float = 0.0
    decode_one: Callable[[], object] | None = None
    decode_batched: Callable[[], object] | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    keeps_memory: bool = False  # needs the process to keep freed memory: runs in the 2nd group


class PeakMemory:
    """Peak memory above the starting point while the block runs, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's resident set size, polled by
    a thread every 2 ms (covers PyTorch, onnxruntime and numpy alike). Sampling can miss a spike
    shorter than a poll or made while another thread holds the GIL; torch and onnxruntime
    kernels release it, so model calls are sampled throughout.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._rss()
        self._peak = self._start
        self._stop = threading.Event()

        def poll() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                time.sleep(RSS_POLL_S)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mb = (peak - self._start) / 2**20


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _torch_engine(name: str, model, device: torch.device, *, prompts: int) -> Engine:
    from ..modeling import EfficientViTSam
    from ..predictor import EfficientViTSamPredictor

    model = model.to(device).eval()
    # Each engine's model is already what it should time: the predictor must not optimise it
    # again (its ``fast`` default would turn the eager engine into the fast path).
    kwargs = {"fast": False} if "fast" in inspect.signature(EfficientViTSamPredictor).parameters \
        else {}
    predictor = EfficientViTSamPredictor(model, device=device, **kwargs)

    def encode(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model.image_encoder(torch.from_numpy(x).to(device))

    engine = Engine(name, encode, predictor, int(model.image_encoder.img_size))
    if isinstance(model, EfficientViTSam):
        emb = encode(np.zeros((1, 3, engine.encoder_size, engine.encoder_size), np.float32))
        gen = torch.Generator().manual_seed(0)
        coords = (torch.rand(prompts, 1, 2, generator=gen) * 1024).to(device)
        labels = torch.ones(prompts, 1, dtype=torch.int, device=device)

        def decode(k: int | None) -> None:
            with torch.inference_mode():
                if k is not None:  # one prompt per call
                    for i in range(k):
                        model.decode(emb, points=(coords[i: i + 1], labels[i: i + 1]),
                                     boxes=None, mask_input=None, multimask_output=True)
                else:
                    model.decode(emb, points=(coords, labels), boxes=None, mask_input=None,
                                  multimask_output=True)

        engine.decode_one = lambda: decode(prompts)
        engine.decode_batched = lambda: decode(None)
    return engine


def _onnx_engine(model, device: torch.device, *, threads: int, prompts: int,
                 workdir: Path) -> Engine:
    import onnxruntime as ort

    from ..export.onnx import example_decoder_inputs, export_onnx
    from ..export.onnx_predictor import OnnxSamPredictor

    paths = export_onnx(model, workdir, verify=False)
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    if providers[0] not in ort.get_available_providers():
        raise RuntimeError(f"onnxruntime has no {providers[0]} here")
    predictor = OnnxSamPredictor(paths["encoder_path"], paths["decoder_path"], providers=providers,
                                 threads=threads)
    engine = Engine("onnx", lambda x: predictor.encoder.run(None, {"images": x}), predictor,
                    predictor.encoder_size)
    feeds = example_decoder_inputs(model.prompt_encoder.embed_dim, num_points=1)

    def decode_one() -> None:
        for _ in range(prompts):
            predictor.decoder.run(None, feeds)

    engine.decode_one = decode_one
    return engine


def _build_engines(args: argparse.Namespace, model, device: torch.device,
                   workdir: Path) -> list[Engine]:
    from ..inference.optimize import FastPathOptions, optimize_for_inference

    engines: list[Engine] = []
    for name in args.engines:
        start = time.perf_counter()
        if name == "eager":
            engine = _torch_engine(name, model, device, prompts=args.prompts)
        elif name == "fused":  # effvit_sam.fuse_model's computation, nothing else
            opts = FastPathOptions.eager().with_(fold_bn=True, fuse_epilogues=True)
            fast = optimize_for_inference(model, device=device, options=opts)
            engine = _torch_engine(name, fast, device, prompts=args.prompts)
        elif name in ("fast", "exact", "fast_direct", "compiled", "bf16"):
            opts = FastPathOptions.exact(device) if name == "exact" \
                else FastPathOptions.auto(device).with_(compile=name == "compiled")
            if name == "fast_direct":
                opts = opts.with_(winograd=False, gemm_pointwise=False, fuse_neck=False,
                                  compiled_gelu=False)
            elif name == "bf16":
                opts = FastPathOptions.bf16() if device.type == "cpu" \
                    else opts.with_(autocast_dtype=torch.bfloat16)
            fast = optimize_for_inference(model, device=device, options=opts)
            engine = _torch_engine(name, fast, device, prompts=args.prompts)
            engine.keeps_memory = opts.keep_freed_memory
        elif name == "int8":
            size = model.encoder_size
            calibration = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
            opts = FastPathOptions.int8()
            fast = optimize_for_inference(model, device=device, options=opts,
                                          calibration=calibration)
            engine = _torch_engine(name, fast, device, prompts=args.prompts)
            engine.keeps_memory = opts.keep_freed_memory
        else:
            engine = _onnx_engine(model, device, threads=args.threads, prompts=args.prompts,
                                  workdir=workdir)
        engine.setup_s = time.perf_counter() - start
        engines.append(engine)
    if "eager" in args.engines and any(e.keeps_memory for e in engines):
        engines.append(_torch_engine("eager_kept", model, device, prompts=args.prompts))
        engines[-1].keeps_memory = True
    for name in args.sam:
        from segment_anything import sam_model_registry

        log.info("building %s with random weights", name)
        sam = sam_model_registry[name.removeprefix("sam_")]()
        engines.append(_torch_engine(name, sam, device, prompts=args.prompts))
    return engines


def run_benchmark(args: argparse.Namespace) -> dict:
    """Time every engine (interleaved), return the JSON-able results."""
    from tqdm import tqdm

    from ..weights import resolve_device, resolve_model

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    model, weights = resolve_model(args.model, checkpoint=args.checkpoint,
                                   random_weights=args.random_weights, require_weights=False)
    print(weights.description)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        engines = _build_engines(args, model, device, Path(tmp))
        inputs = {e.name: {b: rng.standard_normal((b, 3, e.encoder_size, e.encoder_size))
                           .astype(np.float32)
                           for b in sorted({1} if e.name in SAM_BASELINES else {1, args.batch})}
                  for e in engines}

        def tasks(e: Engine) -> dict[str, Callable[[], object]]:
            out: dict[str, Callable[[], object]] = {
                "encoder_b1": lambda: e.encode(inputs[e.name][1])}
            if e.name in SAM_BASELINES:
                # The baselines are compared on encoder latency only: ViT-H takes ~81 s a call.
                return out
            out[f"encoder_b{args.batch}"] = lambda: e.encode(inputs[e.name][args.batch])
            out["end_to_end"] = lambda: (e.predictor.set_image(image),
                                         e.predictor.predict(points=[[320.0, 240.0]], labels=[1]))
            if e.decode_one is not None:
                out["decode_one_per_call"] = e.decode_one
            if e.decode_batched is not None:
                out["decode_batched"] = e.decode_batched
            return out

        groups = [[e for e in engines if not e.keeps_memory], [e for e in engines
                                                                if e.keeps_memory]]
        for i, group in enumerate(g for g in groups if g):
            if group[0].keeps_memory:
                keep_freed_memory()
            for e in group:  # warm-up; the first call also compiles the ``compiled`` engine
                for key, fn in tasks(e).items():
                    start = time.perf_counter()
                    for _ in range(args.warmup):
                        with PeakMemory(device) as mem:
                            fn()
                        e.peak_mb[key] = max(e.peak_mb.get(key, 0.0), mem.peak_mb)
                    log.info("%s %s warm-up %.2fs", e.name, key, time.perf_counter() - start)
            for _ in tqdm(range(args.runs), desc=f"bench runs, group {i + 1}"):
                for e in group:
                    for key, fn in tasks(e).items():
                        e.times.setdefault(key, []).append(_timed(fn, device))
    return summarise(args, engines, device, weights=weights.to_dict())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="effvit-sam bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="l0", help="model to time (default: l0)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights file or save_pretrained folder (default: the official file "
                             "in the Hugging Face cache, else random weights, said so)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights (seed 0) without looking for any; timings do not "
                             "depend on the weights")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="the batch-N encoder figure")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per decoder figure")
    parser.add_argument("--engines", nargs="+", choices=ENGINES,
                        default=[e for e in ENGINES
                                 if e not in ("fused", "exact", "fast_direct", "int8")])
    parser.add_argument("--sam", nargs="*", choices=SAM_BASELINES, default=["sam_vit_b"],
                        help="SAM encoders to compare with (random weights)")
    parser.add_argument("--vit-h", action="store_true",
                        help="also SAM ViT-H (about 81 s per image on a 2-core CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    if args.vit_h and "sam_vit_h" not in args.sam:
        args.sam.append("sam_vit_h")
    for name in ("threads", "batch", "runs", "prompts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    from ..errors import UserError
    from ..weights import resolve_device

    try:
        device = resolve_device(args.device)
    except UserError as err:
        parser.error(str(err))
    if device.type != "cpu" and "int8" in args.engines:
        parser.error("the int8 engine runs on CPU only")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = run_benchmark(args)
    paths = write_report(report, args.out)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
