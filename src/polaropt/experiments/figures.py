"""Matplotlib set-up shared by the experiments' figures: a headless backend, PNG + SVG output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt  # noqa: E402


def new_figure(rows: int = 1, cols: int = 1, *, size=(6, 4.5)):
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=True)
    return fig, axes


def save(fig, out_dir, stem: str) -> list[str]:
    """Write ``stem.png`` and ``stem.svg`` into ``out_dir``; return the file names."""
    out_dir = Path(out_dir)
    fig.tight_layout()
    names = []
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"{stem}.{ext}", dpi=110)
        names.append(f"{stem}.{ext}")
    plt.close(fig)
    return names
