"""Why FedLoGe's SSE-C norm needs the backbone's feature scale: the numbers in docs/federated.md.

1. Mean feature norm at initialisation (train-mode BatchNorm, seed 0, 256 training images
   drawn with seed 0, standardised per channel) of the authors' backbone (ResNet-18,
   CIFAR-10) and of ours.
2. Ten rounds of one local epoch on Fashion-MNIST-LT (configs/fed/fmnist_lt_cpu.yaml, seed 0)
   with the authors' SSE-C norm 0.1: mean feature norm of 500 of the clients' validation
   images and the summed training loss each round, validation accuracies after round 10;
   FedAvg on the same backbone beside.

The CPU configs' SSE-C norm targets come from part 1, so nothing shown is measured on test
images (the runs' last evaluation computes test accuracies too, as every federated evaluation
does: the .json keeps them, nothing reads them).

    .venv/bin/python benchmarks/fed_feature_scale.py     # writes docs/results/fed-feature-scale.md
"""

from __future__ import annotations

import argparse
import time

import torch
from common import CIFAR_ZIP, ROOT, run_script, write_results

from trustvision.config import load_config
from trustvision.data.dataset import load_dataset
from trustvision.federated.config import FedConfig
from trustvision.federated.evaluate import flat_metrics
from trustvision.federated.runner import build_session
from trustvision.federated.session import RoundResult
from trustvision.models import create_model
from trustvision.runs import machine_summary

INIT = [
    ("cifar10", "resnet18", {}),
    ("cifar10", "resnet8", {}),
    ("fashion-mnist", "mnist_cnn", {}),
    ("fashion-mnist", "mnist_cnn", {"feature_norm": True}),
]
RUNS = [  # (label, overrides of configs/fed/fmnist_lt_cpu.yaml)
    ("FedLoGe, mnist_cnn without feature_norm", ["model.kwargs={}"]),
    ("FedLoGe, resnet8", ["model.name=resnet8", "model.kwargs={}"]),
    ("FedAvg, resnet8", ["model.name=resnet8", "model.kwargs={}", "algorithm=fedavg"]),
]
ROUNDS = 10


def initial_norm(dataset: str, model: str, kwargs: dict) -> float:
    """Mean feature norm of a freshly initialised `model` (seed 0) on 256 training images."""
    data = load_dataset(dataset, from_path=str(CIFAR_ZIP) if dataset == "cifar10" else None)
    drawn = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(0))
    x = torch.as_tensor(data.train.images[drawn[:256].numpy()]).float() / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    torch.manual_seed(0)
    net = create_model(model, num_classes=10, in_channels=x.shape[1], **kwargs).train()
    with torch.no_grad():
        return float(net.features(x).norm(dim=1).mean())


def diagnose(overrides: list[str]) -> tuple[list[dict], dict]:
    """Per-round feature norm and loss over ROUNDS rounds; the evaluation after the last."""
    cfg = load_config(
        FedConfig,
        ROOT / "configs/fed/fmnist_lt_cpu.yaml",
        [
            *overrides,
            f"rounds={ROUNDS}",
            f"eval_every={ROUNDS}",  # the session evaluates the last round only
            "local_epochs=1",
            "seed=0",
            *([] if "algorithm=fedavg" in overrides else ["algorithm.options.norm_target=0.1"]),
        ],
    )
    session = build_session(cfg)
    spec = session.federation.spec
    batches = [b[0] for c in session.federation.clients for b in c.val_loader(spec).epoch(0)]
    probe = torch.cat(batches)[:500]
    rows: list[dict] = []
    final: dict = {}

    def measure(done: RoundResult) -> None:
        net = session.server.net
        session.server.load(done.state)
        net.eval()
        with torch.no_grad():
            norm = float(net["model"].features(probe).norm(dim=1).mean())
        rows.append(
            {"round": done.round + 1, "train_loss": done.record["train_loss"], "feature_norm": norm}
        )
        if done.evaluation is not None:
            final.update(flat_metrics(done.evaluation, mask_unseen=True))

    session.run(session.initial_state(), on_round=measure)
    return rows, final


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help explains, anything else is refused
    torch.set_num_threads(1)
    started = time.perf_counter()
    lines = [
        "# FedLoGe and the feature scale",
        "",
        f"Written by `python benchmarks/fed_feature_scale.py` on {time.strftime('%Y-%m-%d')}; "
        f"{machine_summary()}, torch {torch.__version__}, one thread.",
        "",
        "## Mean feature norm at initialisation",
        "",
        "| data set | model | feature dim | mean norm | SSE-C norm giving the authors' scale |",
        "|---|---|---:|---:|---:|",
    ]
    norms = [initial_norm(*row) for row in INIT]
    body: dict = {"initial_norms": [], "runs": {}}
    reference = norms[0]  # ResNet-18: the authors' backbone
    for (dataset, model, kwargs), norm in zip(INIT, norms, strict=True):
        dim = create_model(model, num_classes=10, in_channels=1, **kwargs).feature_dim
        name = model + (" (feature_norm)" if kwargs else "")
        lines.append(f"| {dataset} | {name} | {dim} | {norm:.1f} | {0.1 * reference / norm:.2f} |")
        body["initial_norms"].append({"data": dataset, "model": name, "dim": dim, "norm": norm})
    lines += [
        "",
        f"The authors' SSE-C norm 0.1 on ResNet-18 starts the logits at 0.1 x {reference:.1f} = "
        f"{0.1 * reference:.2f}; the last column is that scale over each model's norm.",
        "",
        f"## {ROUNDS} rounds x 1 local epoch, Fashion-MNIST-LT, SSE-C norm 0.1, seed 0",
    ]
    for label, overrides in RUNS:
        rows, final = diagnose(overrides)
        body["runs"][label] = {"overrides": overrides, "rounds": rows, "final": final}
        lines += ["", f"### {label}", "", "| round | summed train loss | mean feature norm |"]
        lines.append("|---:|---:|---:|")
        lines += [
            f"| {r['round']} | {r['train_loss']:.2f} | {r['feature_norm']:.1f} |" for r in rows
        ]
        accs = {k: v for k, v in final.items() if k.endswith("_val_acc")}
        lines += [
            "",
            "Validation accuracy after round 10: "
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accs.items()),
        ]
        print("\n".join(lines[-4:]), flush=True)
    lines += ["", f"Took {(time.perf_counter() - started) / 60:.1f} min."]
    print(f"wrote {write_results('fed-feature-scale', chr(10).join(lines), body)}")


if __name__ == "__main__":
    run_script(main)
