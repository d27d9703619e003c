"""The one place that sets matplotlib's headless backend and saves a figure: every plotting
module draws with this `plt` and saves with `save_figure`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trustvision.files import write_atomic

__all__ = ["plt", "save_figure"]


def save_figure(
    fig: Any, path: Path, *, rect: tuple[float, float, float, float] | None = None
) -> Path:
    """Lay out (inside `rect` of the figure, if given: room for a legend below), write as a
    120 dpi PNG (creating the folder; whole or not at all, as `write_atomic` writes) and close
    `fig`; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, png.getvalue())
    return path
