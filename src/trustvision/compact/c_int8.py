"""The int8 variant of `compact export-c`: the run's static int8 ONNX model
(export/model.int8.onnx, onnxruntime's QDQ quantisation: uint8 activations, int8 weights per
output channel, int32 biases) as integer C.

Every scale and zero point comes from the QDQ graph, so the C computes what onnxruntime's int8
model computes, to within one step where a value falls on a rounding boundary (the fixed-point
requantisation rounds ties away from zero, onnxruntime's float multiplier to even): pixels become quantised inputs through a 256-entry table per channel (the
normalisation and the input quantisation, computed once here in float32 as onnxruntime does),
each convolution and the linear head accumulate (q - zero point) x int8 weight in int32 from
the int32 bias, and each result is requantised per output channel with a fixed-point
multiplier (int32 mantissa and shift, no float at run time) to the next layer's uint8 scale.
Max-pooling works on the quantised values (its output keeps its input's scale); global
average pooling sums in int32 and requantises once. Only the logits are dequantised, to the
same float32 interface as the float variant.

The graph pattern is what onnxruntime writes for our compact models: Sub and Div (the
normalisation), then DequantizeLinear -> {Conv, MaxPool, ReduceMean, GlobalAveragePool, Gemm}
-> [Relu] [Reshape/Flatten] -> QuantizeLinear for each layer, one chain, each layer reading
the previous one's quantised output. Any other operator is refused by name, and so is any
other wiring, attribute (strides, padding, dilation, Gemm transposes, pooled axes) or
quantisation (non-zero weight zero points, a bias scale other than input x weight scale). No tool we know of turns a QDQ model into dependency-free C (TFLite Micro and CMSIS-NN
bring their runtimes), hence this generator, beside the float one (c_export.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
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

    def dequantize_node(self, name: str) -> Any:
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise ConfigError(f"export-c int8 expects `{name}` to come from a DequantizeLinear")
        return dq

    def constant(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(int values, per-output-channel scale) of a dequantised constant (weights, bias):
        zero points 0, a per-channel scale along axis 0 only."""
        dq = self.dequantize_node(name)
        if dq.input[0] not in self.consts:
            raise ConfigError(f"export-c int8 expects `{name}` to be a constant")
        values, scale = self.consts[dq.input[0]], self.consts[dq.input[1]]
        zero = self.consts[dq.input[2]] if len(dq.input) > 2 else np.zeros(1)
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        if np.any(zero != 0) or (np.size(scale) > 1 and axis != 0):
            raise ConfigError(f"`{name}`: export-c int8 expects symmetric per-channel constants")
        return values, scale

    def activation(self, name: str) -> tuple[Quant, str]:
        """The Quant of an activation a compute node reads, and the QuantizeLinear output it
        dequantises (so that the chain of layers can be checked)."""
        source = self.dequantize_node(name).input[0]
        q_node = self.producer.get(source)
        if q_node is None or q_node.op_type != "QuantizeLinear":
            raise ConfigError(f"export-c int8 expects `{name}` to be a quantised activation")
        return self.quant(q_node), source

    def quantized_output(self, node: Any) -> tuple[Quant, bool, str]:
        """The QuantizeLinear a compute node's output reaches (through Reshape, Flatten or
        Relu), whether a Relu lies on the way, and that QuantizeLinear's output."""
        name, relu = node.output[0], False
        while True:
            users = self.consumers.get(name, [])
            if len(users) != 1:
                raise ConfigError(
                    f"`{node.op_type}` output `{name}` has {len(users)} readers: export-c int8 "
                    "expects a chain of layers, each read once"
                )
            nxt = users[0]
            if nxt.op_type == "QuantizeLinear":
                return self.quant(nxt), relu, nxt.output[0]
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
    users = graph.consumers.get(divs[0].output[0], [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise ConfigError("export-c int8 expects the normalised input to be quantised once")
    quant = graph.quant(users[0])
    pixels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    rows = []
    for ch in range(channels):
        x = (pixels - mean[ch % len(mean)]) / std[ch % len(std)]
        q = np.rint(x / np.float32(quant.scale)) + quant.zero
        rows.append(np.clip(q, 0, 255).astype(np.uint8))
    return np.stack(rows), quant


def _weights(graph: QdqGraph, node: Any, source: Quant, out: Quant) -> dict[str, np.ndarray]:
    """int8 weights, int32 bias and per-channel multipliers of a Conv or Gemm; the bias must
    be quantised with scale input scale x weight scale, as the int32 accumulator is."""
    values, w_scale = graph.constant(node.input[1])
    if values.dtype != np.int8:
        raise ConfigError(f"export-c int8 expects int8 weights, got {values.dtype}")
    scales = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (len(values),))
    bias = np.zeros(len(values), np.int32)
    if len(node.input) > 2 and node.input[2]:
        bias_values, bias_scale = graph.constant(node.input[2])
        expected = source.scale * scales
        if bias_values.dtype != np.int32 or not np.allclose(bias_scale, expected, rtol=1e-5):
            raise ConfigError(
                f"`{node.name}`: export-c int8 expects an int32 bias at scale input scale x "
                "weight scale"
            )
        bias = bias_values.astype(np.int32)
    arrays: dict[str, np.ndarray] = {"w": values.astype(np.int8), "b": bias}
    return arrays | multipliers(source.scale * scales / out.scale)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check(node: Any, ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(
            f"export-c int8 supports {what}, not `{node.op_type}` {_attributes(node)}"
        )


def _check_maxpool(node: Any, attrs: dict[str, Any]) -> None:
    _check(
        node,
        list(attrs.get("kernel_shape", [])) == [2, 2]
        and list(attrs.get("strides", [])) == [2, 2]
        and not any(attrs.get("pads", [0]))
        and not attrs.get("ceil_mode", 0)
        and list(attrs.get("dilations", [1, 1])) == [1, 1],
        "2x2 max-pooling of stride 2",
    )


def _check_spatial_mean(graph: QdqGraph, node: Any, attrs: dict[str, Any]) -> None:
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:  # opset 18: the axes are an input
        axes = graph.consts.get(node.input[1])
    spatial = axes is not None and sorted(int(a) % 4 for a in np.ravel(axes)) == [2, 3]
    _check(node, spatial, "a mean over the two spatial axes")


def int_ops(graph: QdqGraph, input_shape: tuple[int, int, int]) -> tuple[list[IntOp], Quant, int]:
    """The integer calls in graph order, the logits' Quant and the largest activation."""
    c, h, w = input_shape
    ops: list[IntOp] = []
    largest, out = c * h * w, Quant(1.0, 0)
    normalised = next(n for n in graph.nodes if n.op_type == "Div").output[0]
    previous = graph.consumers[normalised][0].output[0]  # the quantised input
    for node in graph.nodes:
        if node.op_type in {"DequantizeLinear", "QuantizeLinear", "Sub", "Div"} | PASS_THROUGH:
            continue
        if node.op_type not in COMPUTE:
            raise ConfigError(
                f"export-c int8 does not support `{node.op_type}` (node `{node.name}`): it "
                "writes C for the operators of the compact models only"
            )
        source, reads = graph.activation(node.input[0])
        if reads != previous:
            raise ConfigError(
                f"`{node.op_type}` (node `{node.name}`) does not read the previous layer's "
                "quantised output: export-c int8 expects one chain of quantised layers"
            )
        out, relu, previous = graph.quantized_output(node)
        low = out.zero if relu else 0
        attrs = _attributes(node)
        if node.op_type == "Conv":
            op, c = _conv(graph, node, source, out, (c, h, w), low)
        elif node.op_type == "MaxPool":
            _check_maxpool(node, attrs)
            if source != out:
                raise ConfigError("export-c int8 expects max-pooling to keep its input's scale")
            op = IntOp("qmaxpool2", (c, h, w))
            h, w = h // 2, w // 2
        elif node.op_type == "Gemm":
            _check(
                node,
                attrs.get("transA", 0) == 0
                and attrs.get("transB", 0) == 1
                and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0,
                "Gemm with transB=1, alpha=beta=1",
            )
            arrays = _weights(graph, node, source, out)
            op = IntOp("qlinear", (c * h * w, len(arrays["w"]), source.zero, out.zero, low), arrays)
            c, h, w = len(arrays["w"]), 1, 1
        else:  # ReduceMean / GlobalAveragePool over the spatial axes
            if node.op_type == "ReduceMean":
                _check_spatial_mean(graph, node, attrs)
            arrays = multipliers(np.array([source.scale / (h * w * out.scale)]))
            op = IntOp("qavgpool", (c, h, w, source.zero, out.zero, low), arrays)
            h = w = 1
        ops.append(op)
        largest = max(largest, c * h * w)
    return ops, out, largest


def _conv(
    graph: QdqGraph, node: Any, source: Quant, out: Quant, shape: tuple[int, int, int], low: int
) -> tuple[IntOp, int]:
    attrs = _attributes(node)
    c, h, w = shape
    arrays = _weights(graph, node, source, out)
    oc, _, k, _ = arrays["w"].shape
    group = attrs.get("group", 1)
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    dilations = list(attrs.get("dilations", [1, 1]))
    if k not in (1, 3) or strides != [1, 1] or pads != [k // 2] * 4 or dilations != [1, 1]:
        raise ConfigError(f"export-c int8 supports 'same' 3x3 and 1x1 convolutions, not {node}")
    if not (group == 1 or (group == c and oc == c)):  # plain, or one filter per channel
        raise ConfigError(f"export-c int8 supports plain or depthwise convolutions, not {node}")
    depthwise = int(group == c and c > 1)
    return IntOp("qconv", (c, h, w, oc, k, depthwise, source.zero, out.zero, low), arrays), oc


def int_kernels() -> str:
    """The integer kernels (kernels/int8.c, package data), as pasted into every int8 file."""
    return (resources.files("trustvision.compact") / "kernels" / "int8.c").read_text()


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
    lines += [int_kernels()]
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
