"""Deployment: ONNX export with the normalisation inside, the parity check, static int8.

The exported model takes float32 pixels in [0, 1], shape (N, C, H, W) (input `pixels`) and
returns logits (output `logits`): `(pixels - mean) / std` is its first operation, so a
caller only divides uint8 images by 255. The batch dimension is dynamic.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

INPUT, OUTPUT = "pixels", "logits"
Calibration = Literal["minmax", "entropy", "percentile"]


class Deployable(nn.Module):
    """A classifier with its input normalisation: [0, 1] pixels in, logits out."""

    mean: Tensor
    std: Tensor

    def __init__(
        self, model: nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, pixels: Tensor) -> Tensor:
        """Normalise with the training set's per-channel mean and std, then classify."""
        return self.model((pixels - self.mean) / self.std)


def export_onnx(
    model: Deployable, path: Path, *, input_shape: tuple[int, int, int], opset: int = 18
) -> Path:
    """Write `model` (eval mode, BatchNorm folded into the convs) as ONNX with a dynamic batch."""
    model = model.eval()
    example = torch.rand(2, *input_shape)
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter warns that torchvision ops are absent
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: batch},),
                external_data=False,  # a tiny model: weights inside the one file
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    strip_debug_info(path)
    return path


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node debug records (source lines, FX names): a third of a tiny file."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del value.metadata_props[:]
    onnx.save(proto, str(path))
    Path(f"{path}.data").unlink(missing_ok=True)  # weights are inline after the save


def session(path: Path, *, threads: int = 1) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads and every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(sess: Any, pixels: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """Logits of an onnxruntime session over float32 pixels, in batches."""
    parts = [
        sess.run([OUTPUT], {INPUT: pixels[i : i + batch_size]})[0]
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def torch_logits(model: nn.Module, pixels: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """Logits of a PyTorch model (eval mode) over float32 pixels, in batches."""
    model.eval()
    parts = [
        model(torch.from_numpy(pixels[i : i + batch_size])).numpy()
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(parts)


def even_batch(count: int, most: int) -> int:
    """The largest batch size up to `most` that splits `count` images into equal batches:
    onnxruntime's histogram calibrators (percentile, entropy) stack the batches' outputs and
    fail on a shorter last one."""
    return next(size for size in range(min(most, max(count, 1)), 0, -1) if count % size == 0)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array of pixels."""

    def __init__(self, pixels: np.ndarray, batch_size: int) -> None:
        self.batches: Iterator[np.ndarray] = iter(
            pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    *,
    calibration: np.ndarray,
    per_channel: bool = True,
    method: Calibration = "minmax",
) -> Path:
    """Static int8 (QDQ; uint8 activations, int8 weights), calibrated on `calibration` pixels."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            _Reader(calibration.astype(np.float32), even_batch(len(calibration), 64)),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
        )
    return int8_path


def parity(reference: np.ndarray, exported: np.ndarray) -> dict[str, float]:
    """Max |logit difference| and the fraction of identical predictions."""
    return {
        "max_abs_diff": float(np.abs(reference - exported).max()),
        "agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits against labels."""
    return float((logits.argmax(1) == labels).mean())


def file_size(path: Path) -> int:
    """Size in bytes of a file, with its external-data file if the exporter wrote one."""
    extra = Path(f"{path}.data")
    return os.path.getsize(path) + (os.path.getsize(extra) if extra.is_file() else 0)
