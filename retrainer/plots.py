"""Pictures for the run report: training curves and the confusion matrix, as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on workers

import matplotlib.pyplot as plt


def plot_training_curves(
    history: dict[str, list[float]], kept_epoch: int, destination: Path
) -> Path:
    """Loss and accuracy per epoch, training and validation side by side; a line marks the epoch
    whose weights the model kept."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = history.get(prefix + metric, [])
            axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
        axis.axvline(kept_epoch, color="grey", linestyle="--", label=f"kept: epoch {kept_epoch}")
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(destination, dpi=100)
    plt.close(figure)
    return destination


def plot_confusion_matrix(
    matrix: list[list[int]], class_names: list[str], destination: Path
) -> Path:
    """Rows are true classes, columns predictions; the diagonal is what the model got right."""
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for row, counts in enumerate(matrix):
        for column, count in enumerate(counts):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(destination, dpi=100)
    plt.close(figure)
    return destination
