"""The one place that sets matplotlib's headless backend and saves a figure: every plotting
module draws with this `plt` and saves with `save_figure`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plt", "save_figure"]


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as a 120 dpi PNG (creating the folder) and close `fig`; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
