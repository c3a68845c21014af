"""The AVSBench-S4 mask pictures: each shown test clip's middle frame, its true mask, and the masks the
segmenters predict (sigmoid > 0.5) in every direction, side by side (`avs_masks.png`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .task import SHORT

FRAME = 2  # the middle one of the five


def plot_masks(pictures: dict, path: Path) -> Path:
    from codaar.evaluate.plots import _pyplot

    plt = _pyplot()
    directions = [k for k in pictures if "->" in k]
    columns = ["frame", "truth"] + [" -> ".join(SHORT[p] for p in k.split("->")) for k in directions]
    rows = len(pictures["clips"])
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.4), squeeze=False)
    for row in range(rows):
        images = [pictures["frames"][row, FRAME], pictures["masks"][row, FRAME]]
        images += [(pictures[k][row, FRAME] > 0).astype(np.float32) for k in directions]
        for col, image in enumerate(images):
            axis = axes[row, col]
            axis.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1 if image.ndim == 2 else None)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[col], fontsize=7)
    figure.suptitle("AVSBench-S4 test clips: predicted masks (trained on -> queried with)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
