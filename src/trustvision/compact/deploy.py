"""`trustvision compact export|bench` on a finished run directory.

export/  model.onnx (fp32), model.int8.onnx (static int8, QDQ), export.json (parity,
         accuracy of each, file sizes, the input contract)
bench.json  parameters, MACs, sizes and latency of PyTorch eager vs onnxruntime fp32/int8
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trustvision.compact.bench import latency
from trustvision.compact.export import (
    Deployable,
    accuracy,
    export_onnx,
    file_size,
    ort_logits,
    parity,
    quantize_int8,
    session,
    torch_logits,
)
from trustvision.compact.model import count_macs, load_deployed
from trustvision.data.dataset import Dataset, load_data
from trustvision.files import write_atomic
from trustvision.runs import RunDir, cpu_name
from trustvision.seeds import derive_seed
from trustvision.train.recipe import WEIGHTS

EXPORT_DIR, EXPORT_JSON, BENCH_JSON = "export", "export.json", "bench.json"
FP32, INT8 = "model.onnx", "model.int8.onnx"


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images to the exported model's input: float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / 255.0


def calibration_pixels(dataset: Dataset, *, count: int, seed: int) -> np.ndarray:
    """A seeded random choice of `count` training images (no augmentation), as model input."""
    n = len(dataset.train)
    rng = np.random.default_rng(derive_seed(seed, "calibration"))
    index = np.sort(rng.choice(n, size=min(count, n), replace=False))
    return pixels(dataset.train.images[index])


def export_run(run: RunDir) -> dict[str, Any]:
    """Export the deployed model to ONNX fp32 and int8, check both on the test set, record it."""
    cfg, model, _ = load_deployed(run)
    dataset = load_data(cfg.data)
    deployable = Deployable(model, mean=dataset.mean, std=dataset.std).eval()
    out = run.path / EXPORT_DIR
    out.mkdir(exist_ok=True)
    fp32 = export_onnx(
        deployable, out / FP32, input_shape=model.input_shape, opset=cfg.export.opset
    )
    calibration = calibration_pixels(dataset, count=cfg.export.calibration_images, seed=cfg.seed)
    int8 = quantize_int8(
        fp32,
        out / INT8,
        calibration=calibration,
        per_channel=cfg.export.per_channel,
        method=cfg.export.calibration,
    )
    end = cfg.data.test_subset or len(dataset.test)
    test, labels = pixels(dataset.test.images[:end]), np.asarray(dataset.test.labels[:end])
    threads = cfg.threads or 1
    reference = torch_logits(deployable, test)
    logits_fp32 = ort_logits(session(fp32, threads=threads), test)
    logits_int8 = ort_logits(session(int8, threads=threads), test)
    record = export_record(
        cfg_export=cfg.export.model_dump(),
        reference=reference,
        fp32=logits_fp32,
        int8=logits_int8,
        labels=labels,
    )
    record["input"] = input_contract(dataset, model.input_shape)
    record["bytes"] = {
        "safetensors": file_size(run.path / WEIGHTS),
        "onnx_fp32": file_size(fp32),
        "onnx_int8": file_size(int8),
    }
    record["opset"] = cfg.export.opset
    write_atomic((out / EXPORT_JSON), json.dumps(record, indent=2) + "\n")
    return record


def export_record(
    *,
    cfg_export: dict[str, Any],
    reference: np.ndarray,
    fp32: np.ndarray,
    int8: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Accuracy of each engine, fp32 parity, int8 drop, and whether each target is met."""
    top1 = {
        "pytorch": accuracy(reference, labels),
        "onnx_fp32": accuracy(fp32, labels),
        "onnx_int8": accuracy(int8, labels),
    }
    fp32_parity, int8_parity = parity(reference, fp32), parity(reference, int8)
    drop = 100 * (top1["pytorch"] - top1["onnx_int8"])
    checks = {
        f"onnx fp32 max |logit diff| <= {cfg_export['max_abs_diff']:g}": fp32_parity["max_abs_diff"]
        <= cfg_export["max_abs_diff"],
        f"onnx fp32 identical predictions >= {cfg_export['min_agreement']:.1%}": fp32_parity[
            "agreement"
        ]
        >= cfg_export["min_agreement"],
        f"int8 accuracy drop <= {cfg_export['max_int8_drop']:g} points": drop
        <= cfg_export["max_int8_drop"],
    }
    return {
        "test_images": len(labels),
        "top1": top1,
        "fp32_parity": fp32_parity,
        "int8_parity": int8_parity,
        "int8_drop_points": drop,
        "checks": checks,
        "passed": all(checks.values()),
    }


def input_contract(dataset: Dataset, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What the exported model expects at its input (normalisation is inside it)."""
    return {
        "name": "pixels",
        "dtype": "float32",
        "shape": ["batch", *input_shape],
        "range": "[0, 1]: uint8 pixels / 255, channels first",
        "normalisation": "inside the model: (pixels - mean) / std",
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }


def bench_run(run: RunDir) -> dict[str, Any]:
    """Parameters, MACs, sizes and latency of the deployed model (exported first if needed)."""
    cfg, model, summary = load_deployed(run)
    out = run.path / EXPORT_DIR
    record = (
        json.loads((out / EXPORT_JSON).read_text())
        if (out / EXPORT_JSON).is_file()
        else export_run(run)
    )
    dataset = load_data(cfg.data)
    deployable = Deployable(model, mean=dataset.mean, std=dataset.std).eval()
    image = pixels(dataset.test.images[0])
    load = os.getloadavg()[0]  # as timing begins: it averages the minute before, not the timing
    rows = latency(
        model=deployable,
        onnx_paths={"fp32": out / FP32, "int8": out / INT8},
        image=image,
        cfg=cfg.bench,
    )
    result = {
        "model": cfg.model.name,
        "parameters": model.num_parameters(),
        "macs": count_macs(model, model.input_shape),
        "bytes": record["bytes"],
        "latency": rows,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "load_average_1min": load,
        "data": summary["data"]["name"],
    }
    write_atomic((run.path / BENCH_JSON), json.dumps(result, indent=2) + "\n")
    return result
