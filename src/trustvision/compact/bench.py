"""What a deployed model costs: parameters, MACs and latency (PyTorch eager vs onnxruntime).

MACs come from PyTorch's FlopCounterMode (convolutions and matrix products; FLOPs / 2 =
multiply-accumulates); BatchNorm, ReLU, pooling and the input normalisation are not
counted. Latency: per engine and thread count, `warmup` untimed calls, then batch-1 calls
timed one by one (p50, p99) and batch-`batch_size` calls for throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from trustvision.compact.config import BenchConfig
from trustvision.compact.export import INPUT, OUTPUT, session
from trustvision.train.recipe import torch_threads

Call = Callable[[np.ndarray], Any]


@torch.no_grad()
def time_calls(call: Call, batch: np.ndarray, *, warmup: int, iterations: int) -> np.ndarray:
    """Seconds of each of `iterations` calls on `batch`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call(batch)
    seconds = np.empty(iterations)
    for index in range(iterations):
        start = time.perf_counter()
        call(batch)
        seconds[index] = time.perf_counter() - start
    return seconds


def measure(call: Call, image: np.ndarray, cfg: BenchConfig) -> dict[str, float]:
    """Batch-1 p50/p99 (ms) and batch throughput (images/s) of one engine."""
    single = time_calls(call, image[None], warmup=cfg.warmup, iterations=cfg.iterations)
    batch = np.repeat(image[None], cfg.batch_size, axis=0)
    many = time_calls(call, batch, warmup=2, iterations=cfg.batch_iterations)
    return {
        "p50_ms": float(np.percentile(single, 50) * 1e3),
        "p99_ms": float(np.percentile(single, 99) * 1e3),
        "throughput": float(cfg.batch_size / np.median(many)),
    }


def torch_call(model: nn.Module) -> Call:
    """PyTorch eager inference of `model` on float32 pixels."""
    model.eval()

    def call(pixels: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(pixels))

    return call


def ort_call(sess: Any) -> Call:
    """onnxruntime inference of a session on float32 pixels."""
    return lambda pixels: sess.run([OUTPUT], {INPUT: pixels})


def latency(
    *, model: nn.Module, onnx_paths: dict[str, Any], image: np.ndarray, cfg: BenchConfig
) -> list[dict[str, Any]]:
    """One row per engine (PyTorch eager, then each ONNX file) and thread count."""
    rows = []
    for threads in cfg.threads:
        with torch_threads(threads):
            stats = measure(torch_call(model), image, cfg)
        rows.append({"engine": "pytorch eager fp32", "threads": threads, **stats})
        for name, path in onnx_paths.items():
            stats = measure(ort_call(session(path, threads=threads)), image, cfg)
            rows.append({"engine": f"onnxruntime {name}", "threads": threads, **stats})
    return rows
