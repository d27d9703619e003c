"""The model card of an evaluated model, in RobustBench's schema (model_info.json)."""

from __future__ import annotations

from typing import Any

# RobustBench's model-info schema (its model_info/<dataset>/<threat>/<model>.json), field
# for field and in its formats: accuracies as percentage strings, eps as "8/255".
MODEL_INFO_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "external",
    "footnote",
    "unreliable",
)


def eps_text(eps: float) -> str:
    """An l_inf budget as RobustBench writes it: "8/255" when it is one, else the number."""
    steps = eps * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 and steps >= 1 else f"{eps:g}"


def model_info(
    *,
    name: str,
    dataset: str,
    architecture: str,
    eps: float,
    clean_acc: float,
    autoattack_acc: float,
    forward_passes: int = 1,
    footnote: str | None = None,
) -> dict[str, Any]:
    """A model card in RobustBench's schema, exactly its fields (`MODEL_INFO_FIELDS`).

    `clean_acc` and `autoattack_acc` are fractions here and percentage strings there, as
    RobustBench writes them ("85.21"). How they were measured (images attacked, attacks, a
    confidence interval) stays in the evaluation's summary.json, not in the card. A mixed
    classifier runs both its bases: `forward_passes=2`, as RobustBench counts MixedNUTS.
    """
    return {
        "link": None,
        "name": name,
        "authors": "trustvision",
        "additional_data": False,
        "number_forward_passes": forward_passes,
        "dataset": dataset,
        "venue": None,
        "architecture": architecture,
        "eps": eps_text(eps),
        "clean_acc": f"{100 * clean_acc:.2f}",
        "reported": None,
        "autoattack_acc": f"{100 * autoattack_acc:.2f}",
        "external": None,
        "footnote": footnote,
        "unreliable": False,
    }
