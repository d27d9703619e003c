"""The compact models as C (`trustvision compact export-c`, float32 and int8): flash and RAM
from the compiled object, parity with onnxruntime on the whole test set and host latency at
batch 1 beside onnxruntime's.

    .venv/bin/python benchmarks/compact_mcu.py RUN_DIR [RUN_DIR ...]   # compact runs, exported
    .venv/bin/python benchmarks/compact_mcu.py --report-only   # the report again, sizes re-summed

Flash is the object's code and constant data (`size`: every .text*, .rodata* and .data*
section), RAM its static buffers (.bss* + .data*): the two activation buffers the layers
ping-pong between. Parity: each
variant's logits from uint8 pixels against onnxruntime's model of the same precision
(export/model.onnx, export/model.int8.onnx) on the same images divided by 255. Latency:
`<prefix>_predict` timed per image with clock_gettime in a C loop, onnxruntime's session timed
per call in Python, both one thread, in the same run. Writes docs/results/compact-mcu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_script, write_results

from trustvision.compact.c_export import Variant, compile_command, export_c, harness
from trustvision.compact.export import INPUT, OUTPUT, session
from trustvision.compact.model import load_deployed
from trustvision.data.dataset import load_dataset
from trustvision.runs import RunDir, machine_summary


def timer(prefix: str) -> str:
    """A C main that times `<prefix>_predict` per image read from stdin (microseconds out)."""
    up = prefix.upper()
    return (
        "#define _POSIX_C_SOURCE 199309L\n"
        f'#include "{prefix}_model.h"\n#include <stdio.h>\n#include <time.h>\n\n'
        "int main(void) {\n"
        f"    static uint8_t image[{up}_INPUT_C * {up}_INPUT_H * {up}_INPUT_W];\n"
        f"    float logits[{up}_CLASSES];\n"
        "    struct timespec a, b;\n"
        "    while (fread(image, sizeof image, 1, stdin) == 1) {\n"
        "        clock_gettime(CLOCK_MONOTONIC, &a);\n"
        f"        {prefix}_predict(image, logits);\n"
        "        clock_gettime(CLOCK_MONOTONIC, &b);\n"
        "        double us = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;\n"
        "        fwrite(&us, sizeof us, 1, stdout);\n"
        "    }\n    return 0;\n}\n"
    )


def sections(obj: Path) -> dict[str, int]:
    """Section sizes (bytes) of a compiled object, from binutils' `size -A`."""
    out = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True)
    sizes: dict[str, int] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = sizes.get(parts[0], 0) + int(parts[1])
    return sizes


def build(folder: Path, work: Path, prefix: str) -> tuple[Path, Path, dict[str, int]]:
    """The logits binary, the timing binary and the model object's section sizes."""
    (folder / "harness.c").write_text(harness(prefix))
    logits_bin = work / f"{prefix}-logits"
    subprocess.run(compile_command(folder, logits_bin, prefix), check=True, capture_output=True)
    (folder / "harness.c").write_text(timer(prefix))
    timer_bin = work / f"{prefix}-timer"
    subprocess.run(compile_command(folder, timer_bin, prefix), check=True, capture_output=True)
    (folder / "harness.c").unlink()
    obj = work / f"{prefix}.o"
    source = str(folder / f"{prefix}_model.c")
    subprocess.run(["cc", "-std=c99", "-O2", "-c", source, "-o", str(obj)], check=True)
    return logits_bin, timer_bin, sections(obj)


def ort_latency_us(sess: Any, images: np.ndarray) -> list[float]:
    """Microseconds per batch-1 call of an onnxruntime session, one per image."""
    times = []
    for image in images:
        start = time.perf_counter()
        sess.run([OUTPUT], {INPUT: image[None]})
        times.append((time.perf_counter() - start) * 1e6)
    return times


ONNX = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
VARIANTS: tuple[Variant, ...] = ("fp32", "int8")


def measure(run_dir: Path, variant: Variant, *, latency_images: int) -> dict[str, Any]:
    run = RunDir.open(run_dir)
    record = export_c(run, variant)
    _, _, summary = load_deployed(run)
    test = load_dataset(summary["data"]["name"]).test
    images, labels = np.ascontiguousarray(test.images), np.asarray(test.labels)
    with tempfile.TemporaryDirectory() as tmp:
        logits_bin, timer_bin, size = build(Path(record["dir"]), Path(tmp), record["prefix"])
        c_out = subprocess.run([str(logits_bin)], input=images.tobytes(), capture_output=True)
        c_logits = np.frombuffer(c_out.stdout, dtype=np.float32).reshape(len(images), -1)
        sample = images[:latency_images]
        timed = subprocess.run([str(timer_bin)], input=sample.tobytes(), capture_output=True)
        c_us = np.frombuffer(timed.stdout, dtype=np.float64)
    sess = session(run.path / "export" / ONNX[variant], threads=1)
    pixels = images.astype(np.float32) / 255
    ort_logits = np.concatenate(
        [sess.run([OUTPUT], {INPUT: pixels[i : i + 500]})[0] for i in range(0, len(pixels), 500)]
    )
    ort_us = ort_latency_us(sess, pixels[:latency_images])
    return {
        "run": str(run_dir),
        "variant": variant,
        "model": summary["model"],
        "data": summary["data"]["name"],
        "parameters": summary["parameters"],
        "test_images": len(images),
        **memory(size),
        "sections": size,
        "agreement": float((c_logits.argmax(1) == ort_logits.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(c_logits - ort_logits).max()),
        "c_top1": float((c_logits.argmax(1) == labels).mean()),
        "onnxruntime_top1": float((ort_logits.argmax(1) == labels).mean()),
        "c_us_p50": statistics.median(c_us),
        "onnxruntime_us_p50": statistics.median(ort_us),
        "latency_images": latency_images,
    }


def memory(sections: dict[str, int]) -> dict[str, int]:
    """Flash and RAM from an object's section sizes: .rodata.cst4 and the like are constants
    too, so every section of each kind counts."""
    return {
        "flash_bytes": sum(
            n for s, n in sections.items() if s.startswith((".text", ".rodata", ".data"))
        ),
        "ram_bytes": sum(n for s, n in sections.items() if s.startswith((".bss", ".data"))),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Compact models as C (float32 and int8)",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}.",
        "",
        "Flash: the .text*, .rodata* and .data* sections of the model's object (`cc -std=c99 -O2",
        "-c`, `size -A`); RAM: .bss* + .data*, the two static activation buffers (float32 or",
        "uint8)"
        + (f"; both summed again {meta['report_only']}" if "report_only" in meta else "")
        + ". Parity against",
        "onnxruntime's model of the same precision (model.onnx, model.int8.onnx) on the whole test",
        "set; latency: median microseconds per image at batch 1, one thread, the C loop timed with",
        "clock_gettime, onnxruntime per call from Python (its call overhead included), in the same",
        "run. The int8 C is integer arithmetic (int32 accumulators, fixed-point per-channel",
        "requantisation) from the QDQ model's scales; only its logits are dequantised.",
        "",
        "| model | data | variant | params | flash (bytes) | RAM (bytes) | test images | same top-1 as ONNX | max abs logit diff | C top-1 | ONNX top-1 | C us | onnxruntime us |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['data']} | {r['variant']} | {r['parameters']:,} | "
            f"{r['flash_bytes']:,} | {r['ram_bytes']:,} | {r['test_images']:,} | "
            f"{100 * r['agreement']:.2f}% | {r['max_abs_logit_diff']:.1e} | "
            f"{100 * r['c_top1']:.2f}% | {100 * r['onnxruntime_top1']:.2f}% | "
            f"{r['c_us_p50']:.0f} | {r['onnxruntime_us_p50']:.0f} |"
        )
    lines += [
        "",
        "An int8 logit differs from onnxruntime's by whole quantisation steps of the output",
        "scale where a requantised value rounds the other way (fixed-point here, float there).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("runs", nargs="*", type=Path, help="finished compact runs (exported)")
    parser.add_argument("--latency-images", type=int, default=1000)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from docs/results/compact-mcu.json, flash and RAM summed again "
        "from its recorded sections (give no RUN_DIR)",
    )
    args = parser.parse_args()
    if args.report_only and args.runs:
        parser.error("--report-only reads the recorded results: give no RUN_DIR")
    if not (args.report_only or args.runs):
        parser.error("give the compact runs to measure (or --report-only)")
    rows, meta = recorded() if args.report_only else measured(args.runs, args.latency_images)
    print(
        write_results("compact-mcu", markdown(rows, meta), {"meta": meta, "rows": rows}).read_text()
    )


def measured(runs: list[Path], latency_images: int) -> tuple[list[dict[str, Any]], dict]:
    """Every variant of every run measured now, and what measured them."""
    rows = [
        measure(run, variant, latency_images=latency_images) for run in runs for variant in VARIANTS
    ]
    meta = {
        "command": "python benchmarks/compact_mcu.py " + " ".join(str(r) for r in runs),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
    }
    return rows, meta


def recorded() -> tuple[list[dict[str, Any]], dict]:
    """The recorded rows, with flash and RAM summed from their sections by today's rule (the
    measurements themselves are not repeated)."""
    results = json.loads((RESULTS / "compact-mcu.json").read_text())
    rows = [{**row, **memory(row["sections"])} for row in results["rows"]]
    meta = {
        **results["meta"],
        "report_only": f"from the recorded sections by `python benchmarks/compact_mcu.py "
        f"--report-only` on {time.strftime('%Y-%m-%d')}",
    }
    return rows, meta


if __name__ == "__main__":
    run_script(main)
