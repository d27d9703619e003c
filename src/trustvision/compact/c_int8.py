"""The int8 variant of `compact export-c`: the run's static int8 ONNX model
(export/model.int8.onnx, onnxruntime's QDQ quantisation: uint8 activations, int8 weights per
output channel, int32 biases) as integer C.

Every scale and zero point comes from the QDQ graph, so the C computes what onnxruntime's int8
model computes: pixels become quantised inputs through a 256-entry table per channel (the
normalisation and the input quantisation, computed once here in float32 as onnxruntime does),
each convolution and the linear head accumulate (q - zero point) x int8 weight in int32 from
the int32 bias, and each result is requantised per output channel with a fixed-point
multiplier (int32 mantissa and shift, no float at run time) to the next layer's uint8 scale.
Max-pooling works on the quantised values (its output keeps its input's scale); global
average pooling sums in int32 and requantises once. Only the logits are dequantised, to the
same float32 interface as the float variant.

The graph pattern is what onnxruntime writes for our compact models: Sub and Div (the
normalisation), then DequantizeLinear -> {Conv, MaxPool, ReduceMean, GlobalAveragePool, Gemm}
-> [Relu] [Reshape/Flatten] -> QuantizeLinear for each layer. Any other operator is refused by
name. No tool we know of turns a QDQ model into dependency-free C (TFLite Micro and CMSIS-NN
bring their runtimes), hence this generator, beside the float one (c_export.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustvision.errors import ConfigError

COMPUTE = {"Conv", "MaxPool", "ReduceMean", "GlobalAveragePool", "Gemm"}
PASS_THROUGH = {"Reshape", "Flatten", "Relu"}


@dataclass(frozen=True)
class Quant:
    """A uint8 tensor's scale and zero point."""

    scale: float
    zero: int


@dataclass
class IntOp:
    """One integer C call: its kind, shape arguments and const arrays (name -> values)."""

    kind: str
    args: tuple[int, ...]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def fixed_point(multiplier: float) -> tuple[int, int]:
    """`multiplier` as (m, shift) with multiplier ~ m * 2**-shift, m in [2**30, 2**31)."""
    if not multiplier > 0:
        raise ConfigError(f"a requantisation multiplier must be positive, got {multiplier}")
    mantissa, exponent = math.frexp(multiplier)
    m = round(mantissa * (1 << 31))
    if m == 1 << 31:
        m, exponent = m // 2, exponent + 1
    shift = 31 - exponent
    if not 0 < shift < 63:
        raise ConfigError(f"requantisation multiplier {multiplier:g} is out of the int32 range")
    return m, shift


def multipliers(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel fixed-point multipliers: `m` (int32) and `sh` (int8) arrays."""
    pairs = [fixed_point(float(v)) for v in np.atleast_1d(values)]
    return {
        "m": np.array([p[0] for p in pairs], dtype=np.int32),
        "sh": np.array([p[1] for p in pairs], dtype=np.int8),
    }


class QdqGraph:
    """The nodes, constants and producers/consumers of an onnxruntime QDQ model."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def quant(self, q_node: Any) -> Quant:
        scale, zero = (self.consts[name] for name in q_node.input[1:3])
        if zero.dtype != np.uint8:
            raise ConfigError(f"export-c int8 expects uint8 activations, got {zero.dtype}")
        return Quant(float(scale), int(zero))

    def dequantized(self, name: str) -> tuple[np.ndarray, np.ndarray] | Quant:
        """What a compute node reads: (int values, scale) of a constant, or an activation's
        Quant (the DequantizeLinear of a QuantizeLinear's output)."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise ConfigError(f"export-c int8 expects `{name}` to come from a DequantizeLinear")
        source = dq.input[0]
        if source in self.consts:
            return self.consts[source], self.consts[dq.input[1]]
        return self.quant(self.producer[source])

    def quantized_output(self, node: Any) -> tuple[Quant, bool]:
        """The QuantizeLinear a compute node's output reaches (through Reshape, Flatten or
        Relu) and whether a Relu lies on the way."""
        name, relu = node.output[0], False
        while True:
            (nxt,) = self.consumers.get(name, [None])
            if nxt is None:
                raise ConfigError(f"`{node.op_type}` output `{name}` is never quantised")
            if nxt.op_type == "QuantizeLinear":
                return self.quant(nxt), relu
            if nxt.op_type not in PASS_THROUGH:
                raise ConfigError(f"export-c int8 does not support `{nxt.op_type}` after a layer")
            relu = relu or nxt.op_type == "Relu"
            name = nxt.output[0]


def input_table(graph: QdqGraph, channels: int) -> tuple[np.ndarray, Quant]:
    """The pixel -> quantised input table (channels x 256) and the input's Quant: float32
    (pixel / 255 - mean) / std, rounded half to even, as onnxruntime computes it."""
    subs = [n for n in graph.nodes if n.op_type == "Sub"]
    divs = [n for n in graph.nodes if n.op_type == "Div"]
    if len(subs) != 1 or len(divs) != 1:
        raise ConfigError("export-c int8 expects one Sub and one Div (the normalisation)")
    mean = graph.consts[subs[0].input[1]].astype(np.float32).reshape(-1)
    std = graph.consts[divs[0].input[1]].astype(np.float32).reshape(-1)
    (q_node,) = graph.consumers[divs[0].output[0]]
    quant = graph.quant(q_node)
    pixels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    rows = []
    for ch in range(channels):
        x = (pixels - mean[ch % len(mean)]) / std[ch % len(std)]
        q = np.rint(x / np.float32(quant.scale)) + quant.zero
        rows.append(np.clip(q, 0, 255).astype(np.uint8))
    return np.stack(rows), quant


def _weights(graph: QdqGraph, node: Any, source: Quant, out: Quant) -> dict[str, np.ndarray]:
    weight = graph.dequantized(node.input[1])
    bias = graph.dequantized(node.input[2]) if len(node.input) > 2 else None
    if isinstance(weight, Quant) or isinstance(bias, Quant):
        raise ConfigError(f"`{node.name}`: export-c int8 expects constant weights and bias")
    values, w_scale = weight
    if values.dtype != np.int8:
        raise ConfigError(f"export-c int8 expects int8 weights, got {values.dtype}")
    arrays = {"w": values.astype(np.int8)}
    arrays["b"] = bias[0].astype(np.int32) if bias is not None else np.zeros(len(values), np.int32)
    scales = np.broadcast_to(np.asarray(w_scale, np.float64), (len(values),))
    return arrays | multipliers(source.scale * scales / out.scale)


def int_ops(graph: QdqGraph, input_shape: tuple[int, int, int]) -> tuple[list[IntOp], Quant, int]:
    """The integer calls in graph order, the logits' Quant and the largest activation."""
    c, h, w = input_shape
    ops: list[IntOp] = []
    largest, out = c * h * w, Quant(1.0, 0)
    for node in graph.nodes:
        if node.op_type in {"DequantizeLinear", "QuantizeLinear", "Sub", "Div"} | PASS_THROUGH:
            continue
        if node.op_type not in COMPUTE:
            raise ConfigError(
                f"export-c int8 does not support `{node.op_type}` (node `{node.name}`): it "
                "writes C for the operators of the compact models only"
            )
        source = graph.dequantized(node.input[0])
        assert isinstance(source, Quant)
        out, relu = graph.quantized_output(node)
        low = out.zero if relu else 0
        if node.op_type == "Conv":
            op, c = _conv(graph, node, source, out, (c, h, w), low)
        elif node.op_type == "MaxPool":
            if source != out:
                raise ConfigError("export-c int8 expects max-pooling to keep its input's scale")
            op = IntOp("qmaxpool2", (c, h, w))
            h, w = h // 2, w // 2
        elif node.op_type == "Gemm":
            arrays = _weights(graph, node, source, out)
            op = IntOp("qlinear", (c * h * w, len(arrays["w"]), source.zero, out.zero, low), arrays)
            c, h, w = len(arrays["w"]), 1, 1
        else:  # ReduceMean / GlobalAveragePool over the spatial axes
            arrays = multipliers(np.array([source.scale / (h * w * out.scale)]))
            op = IntOp("qavgpool", (c, h, w, source.zero, out.zero, low), arrays)
            h = w = 1
        ops.append(op)
        largest = max(largest, c * h * w)
    return ops, out, largest


def _conv(
    graph: QdqGraph, node: Any, source: Quant, out: Quant, shape: tuple[int, int, int], low: int
) -> tuple[IntOp, int]:
    attrs = {a.name: a for a in node.attribute}
    c, h, w = shape
    arrays = _weights(graph, node, source, out)
    oc, _, k, _ = arrays["w"].shape
    group = attrs["group"].i if "group" in attrs else 1
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
    if k not in (1, 3) or strides != [1, 1] or pads != [k // 2] * 4 or group not in (1, c):
        raise ConfigError(f"export-c int8 supports 'same' 3x3 and 1x1 convolutions, not {node}")
    depthwise = int(group == c and c > 1)
    return IntOp("qconv", (c, h, w, oc, k, depthwise, source.zero, out.zero, low), arrays), oc


INT_KERNELS = r"""
static int32_t requantize(int32_t acc, int32_t m, int shift) {
    int64_t p = (int64_t)acc * m, half = (int64_t)1 << (shift - 1);
    return (int32_t)(p >= 0 ? (p + half) >> shift : -((-p + half) >> shift));
}

static uint8_t saturate(int32_t v, int32_t low) {
    return (uint8_t)(v < low ? low : (v > 255 ? 255 : v));
}

static void qconv(const uint8_t *in, uint8_t *out, int c, int h, int w, int oc, int k, int dw,
                  int32_t zin, int32_t zout, int32_t low, const int8_t *wt, const int32_t *b,
                  const int32_t *m, const int8_t *sh) {
    int p = k / 2;
    for (int o = 0; o < oc; o++) {
        int first = dw ? o : 0, count = dw ? 1 : c;
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                int32_t acc = b[o];
                for (int i = 0; i < count; i++) {
                    const uint8_t *plane = in + (first + i) * h * w;
                    const int8_t *kern = wt + ((o * count) + i) * k * k;
                    for (int dy = 0; dy < k; dy++) {
                        int yy = y + dy - p;
                        if (yy < 0 || yy >= h) continue;
                        for (int dx = 0; dx < k; dx++) {
                            int xx = x + dx - p;
                            if (xx < 0 || xx >= w) continue;
                            acc += ((int32_t)plane[yy * w + xx] - zin) * kern[dy * k + dx];
                        }
                    }
                }
                out[(o * h + y) * w + x] = saturate(requantize(acc, m[o], sh[o]) + zout, low);
            }
        }
    }
}

static void qmaxpool2(const uint8_t *in, uint8_t *out, int c, int h, int w) {
    int oh = h / 2, ow = w / 2;
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                const uint8_t *p = in + (ch * h + 2 * y) * w + 2 * x;
                uint8_t v = p[0];
                if (p[1] > v) v = p[1];
                if (p[w] > v) v = p[w];
                if (p[w + 1] > v) v = p[w + 1];
                out[(ch * oh + y) * ow + x] = v;
            }
}

static void qavgpool(const uint8_t *in, uint8_t *out, int c, int h, int w, int32_t zin,
                     int32_t zout, int32_t low, const int32_t *m, const int8_t *sh) {
    for (int ch = 0; ch < c; ch++) {
        int32_t acc = 0;
        for (int i = 0; i < h * w; i++) acc += (int32_t)in[ch * h * w + i] - zin;
        out[ch] = saturate(requantize(acc, m[0], sh[0]) + zout, low);
    }
}

static void qlinear(const uint8_t *in, uint8_t *out, int n, int mo, int32_t zin, int32_t zout,
                    int32_t low, const int8_t *wt, const int32_t *b, const int32_t *m,
                    const int8_t *sh) {
    for (int o = 0; o < mo; o++) {
        int32_t acc = b[o];
        for (int i = 0; i < n; i++) acc += ((int32_t)in[i] - zin) * wt[o * n + i];
        out[o] = saturate(requantize(acc, m[o], sh[o]) + zout, low);
    }
}
"""

C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int32): "int32_t",
}


def int_array(name: str, values: np.ndarray) -> str:
    kind = C_TYPES[values.dtype]
    flat = ", ".join(str(int(v)) for v in values.reshape(-1))
    return f"static const {kind} {name}[{values.size}] = {{{flat}}};\n"


def int8_source(
    ops: list[IntOp],
    table: np.ndarray,
    logits: Quant,
    largest: int,
    *,
    input_shape: tuple[int, int, int],
    prefix: str,
) -> str:
    """The C file: const int8/int32 arrays, two static uint8 buffers, the integer kernels and
    `<prefix>_predict`, which dequantises the logits only."""
    c, h, w = input_shape
    lines = [f'#include "{prefix}_model.h"', "#include <stdint.h>", "#include <string.h>", ""]
    lines.append(int_array("in_table", table))
    for n, op in enumerate(ops):
        lines += [int_array(f"{key}{n}", values) for key, values in op.arrays.items()]
    lines += [f"static uint8_t buf_a[{largest}];", f"static uint8_t buf_b[{largest}];"]
    lines += [INT_KERNELS]
    lines += [
        f"void {prefix}_predict(const uint8_t *pixels, float *logits) {{",
        "    uint8_t *src = buf_a, *dst = buf_b, *tmp;",
        f"    for (int ch = 0; ch < {c}; ch++)",
        f"        for (int i = 0; i < {h * w}; i++)",
        f"            src[ch * {h * w} + i] = in_table[ch * 256 + pixels[ch * {h * w} + i]];",
    ]
    for n, op in enumerate(ops):
        args = ", ".join(str(v) for v in op.args)
        extra = "".join(f", {key}{n}" for key in op.arrays)
        lines.append(f"    {op.kind}(src, dst, {args}{extra});")
        lines.append("    tmp = src; src = dst; dst = tmp;")
    classes = ops[-1].args[1]
    lines += [
        f"    for (int i = 0; i < {classes}; i++)",
        f"        logits[i] = {logits.scale:.9e}f * (float)((int32_t)src[i] - {logits.zero});",
        "}",
        "",
    ]
    return "\n".join(lines)
