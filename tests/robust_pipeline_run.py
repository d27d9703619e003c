"""The robust pipeline of the tests on a sliver of MNIST (`tiny`), run with mixes that cannot read
a test image; shared by test_robust_pipeline.py and test_robust_pipeline_parts.py."""

from dataclasses import replace
from pathlib import Path

from benchmark_scripts import benchmark

import trustvision.robust.commands.common as common
import trustvision.robust.commands.demo as pipeline
import trustvision.robust.evaluate as evaluate
from trustvision.config import load_config
from trustvision.robust.config import PipelineConfig

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs/robust/demo_mnist.yaml"


TINY_TRAIN = ["epochs=1", "data.train_subset=384", "data.test_subset=200", "data.batch_size=64"]


def tiny(tmp_path: Path) -> PipelineConfig:
    overrides = [f"{who}.{o}" for who in ("standard", "robust", "smoothing") for o in TINY_TRAIN]
    return load_config(
        PipelineConfig,
        DEMO,
        [
            f"runs_dir={tmp_path}",
            "device=cpu",
            "smoothing={attack: {method: gaussian, sigma: 0.25}}",
            *overrides,
            "sweep.alphas=[0.0, 0.5, 1.0]",
            "sweep.subset=12",
            "sweep.temperatures_rob=[0.5, 1.0]",
            "sweep.attack={attacks: [apgd-ce], n_iter: 3}",
            "eval.subset=12",
            "eval.test_subset=300",
            "eval.chunk=6",
            "eval.custom={attacks: [apgd-ce, apgd-t, square], n_iter: 3, n_target_classes: 2, square_queries: 10}",
            "eval.pgd_steps=3",
            "eval.eps_sweep_subset=6",
            "adaptive=true",
            "mixnet={epochs: 1, train_subset: 128, batch_size: 64, width: 8, steps_df: 1.0, target_classes: 1, bias_sweep: [0.0, 1.0]}",
            "certify={subset: 6, n0: 10, n: 40, alphas: [1.0, 0.9], attack_check: 2, batch_size: 40}",
        ],
    )


class NoTestImages:
    """A test split that fails on any read: making a mix must not look at test images."""

    def __getattr__(self, name):
        raise AssertionError(f"a mix read the test split (`{name}`)")

    def __len__(self):
        raise AssertionError("a mix read the test split (len)")


def mixes_without_test_images(monkeypatch, caller=pipeline) -> None:
    """Make every `run_mix` of `caller` (a module: the pipeline) see a data set whose test
    split cannot be read."""
    real = caller.run_mix

    def run_mix(*args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(
                common,
                "recorded_dataset",
                lambda data: replace(evaluate.recorded_dataset(data), test=NoTestImages()),
            )
            return real(*args, **kwargs)

    monkeypatch.setattr(caller, "run_mix", run_mix)


def benchmark_report():
    """benchmarks/robust_report.py, the tables of benchmarks/robust.py, as a module."""
    return benchmark("robust_report")
