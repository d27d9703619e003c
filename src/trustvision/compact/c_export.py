"""`trustvision compact export-c`: the deployed compact model as one C99 file and a header.

The file computes logits from uint8 pixels with static buffers only (no malloc, nothing
beyond <stdint.h> and <string.h>), its weights `const` arrays (flash on a microcontroller),
batch-norm folded into the convolution before it. It supports exactly the operators of our
compact models (models/compact.py): 'same' 3x3 or 1x1 convolutions (plain or depthwise),
BatchNorm2d after a convolution, ReLU, 2x2 max-pool, global average pooling, flatten and the
linear head; anything else is refused with the module it met. No tool we know of writes this
kind of C for a PyTorch model without a runtime library (TFLite Micro, CMSIS-NN need theirs),
hence this small generator. This is the float32 variant; c_int8.py writes the int8 one from
the run's quantised ONNX model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from trustvision.compact.c_int8 import QdqGraph, input_table, int8_source, int_ops
from trustvision.compact.deploy import EXPORT_DIR, INT8
from trustvision.compact.model import load_deployed
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.models import ImageClassifier
from trustvision.runs import RunDir

C_DIR = "c"
PREFIXES = {"fp32": "tv", "int8": "tv_int8"}  # each variant's file and function names
Variant = Literal["fp32", "int8"]


@dataclass
class Op:
    """One C call: `kind` with its shape arguments and the names of its const arrays."""

    kind: str
    args: tuple[int, ...]
    arrays: tuple[str, ...] = ()


def layers(model: ImageClassifier) -> list[nn.Module]:
    """The model's leaf modules in forward order (stem, stages, neck, head)."""
    parts = [model.stem, *model.stages, model.neck, model.head]
    return [m for part in parts for m in part.modules() if not list(m.children())]


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    """A convolution's weights and bias with the batch-norm after it folded in."""
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64)
    )
    if bn is not None:
        if not bn.affine or bn.running_mean is None or bn.running_var is None:
            raise ConfigError(
                f"export-c folds a BatchNorm with a scale, a shift and running statistics, not {bn}"
            )
        assert bn.weight is not None and bn.bias is not None
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return weight.float().numpy(), bias.float().numpy()


def plan(
    model: ImageClassifier, input_shape: tuple[int, int, int]
) -> tuple[list[Op], dict[str, np.ndarray], int]:
    """The C calls, their const arrays and the largest activation (floats) of the network."""
    mods = list(layers(model))
    ops: list[Op] = []
    arrays: dict[str, np.ndarray] = {}
    c, h, w = input_shape
    largest = c * h * w
    index = 0
    while index < len(mods):
        module = mods[index]
        if isinstance(module, nn.Conv2d):
            check_conv(module)
            k = module.kernel_size[0]
            bn = mods[index + 1] if index + 1 < len(mods) else None
            bn = bn if isinstance(bn, nn.BatchNorm2d) else None
            weight, bias = fold(module, bn)
            n = len(ops)
            arrays[f"w{n}"], arrays[f"b{n}"] = weight, bias
            depthwise = int(module.groups == module.in_channels and module.groups > 1)
            ops.append(Op("conv", (c, h, w, module.out_channels, k, depthwise), (f"w{n}", f"b{n}")))
            c = module.out_channels
            index += 2 if bn is not None else 1
        elif isinstance(module, nn.ReLU):
            ops.append(Op("relu", (c * h * w,)))
            index += 1
        elif isinstance(module, nn.MaxPool2d) and plain_pool2(module):
            ops.append(Op("maxpool2", (c, h, w)))
            h, w = h // 2, w // 2
            index += 1
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            ops.append(Op("avgpool", (c, h, w)))
            h = w = 1
            index += 1
        elif isinstance(module, nn.Flatten):
            index += 1
        elif isinstance(module, nn.Linear) and index == len(mods) - 1:
            n = len(ops)
            arrays[f"w{n}"] = module.weight.detach().float().numpy()
            arrays[f"b{n}"] = module.bias.detach().float().numpy()
            ops.append(Op("linear", (module.in_features, module.out_features), (f"w{n}", f"b{n}")))
            c = module.out_features
            index += 1
        else:
            raise ConfigError(
                f"export-c does not support `{type(module).__name__}` ({module}): it writes C "
                "for the operators of the compact models only"
            )
        largest = max(largest, c * h * w)
    return ops, arrays, largest


KERNELS = r"""
static void conv(const float *in, float *out, int c, int h, int w, int oc, int k, int dw,
                 const float *wt, const float *b) {
    int p = k / 2;
    for (int o = 0; o < oc; o++) {
        int first = dw ? o : 0, count = dw ? 1 : c;
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                float acc = b[o];
                for (int i = 0; i < count; i++) {
                    const float *plane = in + (first + i) * h * w;
                    const float *kern = wt + ((o * count) + i) * k * k;
                    for (int dy = 0; dy < k; dy++) {
                        int yy = y + dy - p;
                        if (yy < 0 || yy >= h) continue;
                        for (int dx = 0; dx < k; dx++) {
                            int xx = x + dx - p;
                            if (xx < 0 || xx >= w) continue;
                            acc += plane[yy * w + xx] * kern[dy * k + dx];
                        }
                    }
                }
                out[(o * h + y) * w + x] = acc;
            }
        }
    }
}

static void relu(float *buf, int n) {
    for (int i = 0; i < n; i++) if (buf[i] < 0.0f) buf[i] = 0.0f;
}

static void maxpool2(const float *in, float *out, int c, int h, int w) {
    int oh = h / 2, ow = w / 2;
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                const float *p = in + (ch * h + 2 * y) * w + 2 * x;
                float m = p[0];
                if (p[1] > m) m = p[1];
                if (p[w] > m) m = p[w];
                if (p[w + 1] > m) m = p[w + 1];
                out[(ch * oh + y) * ow + x] = m;
            }
}

static void avgpool(const float *in, float *out, int c, int h, int w) {
    for (int ch = 0; ch < c; ch++) {
        float s = 0.0f;
        for (int i = 0; i < h * w; i++) s += in[ch * h * w + i];
        out[ch] = s / (float)(h * w);
    }
}

static void linear(const float *in, float *out, int n, int m, const float *wt, const float *b) {
    for (int o = 0; o < m; o++) {
        float acc = b[o];
        for (int i = 0; i < n; i++) acc += wt[o * n + i] * in[i];
        out[o] = acc;
    }
}
"""


def c_array(name: str, values: np.ndarray) -> str:
    flat = ", ".join(f"{float(v):.9e}f" for v in values.reshape(-1))
    return f"static const float {name}[{values.size}] = {{{flat}}};\n"


def c_source(
    ops: list[Op],
    arrays: dict[str, np.ndarray],
    largest: int,
    *,
    input_shape: tuple[int, int, int],
    mean: list[float],
    std: list[float],
    prefix: str = PREFIXES["fp32"],
) -> str:
    """The C file: const weights, two static activation buffers, the kernels and
    `<prefix>_predict`."""
    c, h, w = input_shape
    lines = [f'#include "{prefix}_model.h"', "#include <stdint.h>", "#include <string.h>", ""]
    lines += [c_array(name, values) for name, values in arrays.items()]
    lines += [f"static float buf_a[{largest}];", f"static float buf_b[{largest}];", KERNELS]
    scale = ", ".join(f"{1.0 / (255.0 * s):.9e}f" for s in std)
    shift = ", ".join(f"{m / s:.9e}f" for m, s in zip(mean, std, strict=True))
    lines += [
        f"static const float in_scale[{c}] = {{{scale}}};",
        f"static const float in_shift[{c}] = {{{shift}}};",
        "",
        f"void {prefix}_predict(const uint8_t *pixels, float *logits) {{",
        "    float *src = buf_a, *dst = buf_b, *tmp;",
        f"    for (int ch = 0; ch < {c}; ch++)",
        f"        for (int i = 0; i < {h * w}; i++)",
        f"            src[ch * {h * w} + i] = pixels[ch * {h * w} + i] * in_scale[ch] - in_shift[ch];",
    ]
    for op in ops:
        a = ", ".join(str(v) for v in op.args)
        if op.kind == "relu":
            lines.append(f"    relu(src, {a});")
            continue
        extra = "".join(f", {name}" for name in op.arrays)
        lines.append(f"    {op.kind}(src, dst, {a}{extra});")
        lines.append("    tmp = src; src = dst; dst = tmp;")
    lines += [f"    memcpy(logits, src, {ops[-1].args[-1]} * sizeof(float));", "}", ""]
    return "\n".join(lines)


def c_header(input_shape: tuple[int, int, int], classes: int, prefix: str) -> str:
    c, h, w = input_shape
    up = prefix.upper()
    return (
        f"#ifndef {up}_MODEL_H\n#define {up}_MODEL_H\n#include <stdint.h>\n\n"
        f"#define {up}_INPUT_C {c}\n#define {up}_INPUT_H {h}\n"
        f"#define {up}_INPUT_W {w}\n#define {up}_CLASSES {classes}\n\n"
        "/* Logits of one image: `pixels` are C x H x W uint8 values (channel-major). */\n"
        f"void {prefix}_predict(const uint8_t *pixels, float *logits);\n\n#endif\n"
    )


def export_c(run: RunDir, variant: Variant = "fp32") -> dict[str, Any]:
    """Write `RUN/c/<prefix>_model.c` and `.h` for the run's deployed model: float32 from its
    weights, or int8 from its quantised ONNX model (`trustvision compact export` first)."""
    _, model, summary = load_deployed(run)
    shape = tuple(int(v) for v in summary["input_shape"])
    assert len(shape) == 3
    prefix = PREFIXES[variant]
    if variant == "fp32":
        ops, arrays, largest = plan(model, shape)
        data = summary["data"]
        source = c_source(
            ops, arrays, largest, input_shape=shape, mean=data["mean"], std=data["std"]
        )
        operators, constants = [op.kind for op in ops], int(sum(a.size for a in arrays.values()))
    else:
        source, operators, constants, largest = int8_c(run, shape, prefix)
    out = run.path / C_DIR
    out.mkdir(exist_ok=True)
    write_atomic((out / f"{prefix}_model.c"), source)
    write_atomic((out / f"{prefix}_model.h"), c_header(shape, int(summary["num_classes"]), prefix))
    return {
        "dir": str(out),
        "variant": variant,
        "prefix": prefix,
        "operators": operators,
        "constants": constants,
        "activation_values": largest,
    }


def int8_c(
    run: RunDir, shape: tuple[int, int, int], prefix: str
) -> tuple[str, list[str], int, int]:
    """The int8 C of the run's export/model.int8.onnx: source, operators, constants, largest."""
    import onnx

    path = run.path / EXPORT_DIR / INT8
    if not path.is_file():
        raise ConfigError(
            f"`{run.path}` has no int8 ONNX model ({path}): run `trustvision compact export "
            f"{run.path}` first"
        )
    graph = QdqGraph(onnx.load(str(path)))
    table, _ = input_table(graph, shape[0])
    ops, logits, largest = int_ops(graph, shape)
    if not ops or ops[-1].kind != "qlinear":
        raise ConfigError("export-c int8 expects the model to end with its linear head")
    source = int8_source(ops, table, logits, largest, input_shape=shape, prefix=prefix)
    constants = table.size + sum(a.size for op in ops for a in op.arrays.values())
    return source, [op.kind for op in ops], int(constants), largest


def harness(prefix: str = PREFIXES["fp32"]) -> str:
    """A C main for tests and benchmarks: N images on stdin (uint8), N x classes floats out."""
    up = prefix.upper()
    return (
        f'#include "{prefix}_model.h"\n#include <stdio.h>\n\n'
        "int main(void) {\n"
        f"    static uint8_t image[{up}_INPUT_C * {up}_INPUT_H * {up}_INPUT_W];\n"
        f"    float logits[{up}_CLASSES];\n"
        "    while (fread(image, sizeof image, 1, stdin) == 1) {\n"
        f"        {prefix}_predict(image, logits);\n"
        "        fwrite(logits, sizeof logits, 1, stdout);\n"
        "    }\n    return 0;\n}\n"
    )


def compile_command(folder: Path, binary: Path, prefix: str = PREFIXES["fp32"]) -> list[str]:
    """How the test and the benchmark build the model with its harness (harness.c)."""
    return [
        "cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2",
        str(folder / f"{prefix}_model.c"), str(folder / "harness.c"), "-o", str(binary), "-lm",
    ]  # fmt: skip


def plain_pool2(pool: nn.MaxPool2d) -> bool:
    """A 2x2 max-pool of stride 2, no padding, flooring: the one the C kernel computes."""
    pair = (2, (2, 2))
    return (
        pool.kernel_size in pair
        and pool.stride in pair
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
    )


def check_conv(conv: nn.Conv2d) -> None:
    """ConfigError for a convolution the C kernel would compute wrongly."""
    k = conv.kernel_size[0]
    same = conv.padding == (k // 2, k // 2) and conv.stride == (1, 1)
    if conv.kernel_size not in ((3, 3), (1, 1)) or not same or conv.dilation != (1, 1):
        raise ConfigError(f"export-c supports 'same' 3x3 and 1x1 convolutions, not {conv}")
    if conv.padding_mode != "zeros":
        raise ConfigError(f"export-c pads with zeros, not `{conv.padding_mode}`: {conv}")
    if conv.groups != 1 and not (conv.groups == conv.in_channels == conv.out_channels):
        raise ConfigError(
            "export-c supports plain or depthwise convolutions (one output channel per input "
            f"channel), not {conv}"
        )
