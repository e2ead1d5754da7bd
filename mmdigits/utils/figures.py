"""Figures logged during a run (TensorBoard)."""

from __future__ import annotations

from typing import Any


def add_confusion_figure(loggers: list[Any], confmat: Any, confusion: Any, step: int) -> None:
    """The test confusion matrix as a figure in every logger that takes figures (TensorBoard)."""
    for logger in loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "add_figure"):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, _ = confmat.plot(confusion)
            writer.add_figure("test/confusion_matrix", fig, global_step=step)
            plt.close(fig)
