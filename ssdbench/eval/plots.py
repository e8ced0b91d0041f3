"""Pictures of one COCO evaluation: per-class AP bars, precision-recall curves, confusion matrix.

`write_eval_pictures(details, folder)` writes ``per_class_ap.png``, ``pr_curves.png`` (all
classes at IoU 0.5 and 0.75), ``pr_curves_per_class.png`` (one small panel per class) and
``confusion_matrix.png`` (when ``details.confusion`` is set) and returns their paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ssdbench.eval.per_class import CocoDetails, per_class_rows, pr_curve

PR_IOUS = (0.5, 0.75)
_COLOURS = {0.5: "#2b6cb0", 0.75: "#d0652b"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def per_class_ap_bars(details: CocoDetails, path: str | Path) -> Path:
    """Horizontal bars of AP@[.5:.95] and AP50 per class, best first; classes without ground
    truth are left out."""
    rows = sorted((r for r in per_class_rows(details) if r["ap"] is not None), key=lambda r: r["ap"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.22 * max(len(rows), 3)))
    y = np.arange(len(rows))
    ax.barh(y, [r["ap50"] for r in rows], color="#b7cde8", label="AP50")
    ax.barh(y, [r["ap"] for r in rows], color="#2b6cb0", label="AP@[.5:.95]")
    ax.set_yticks(y, [f"{r['name']} ({r['gt']})" for r in rows], fontsize=8)
    ax.axvline(details.stats[0], color="k", linestyle="--", linewidth=1, label=f"mAP {details.stats[0]:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (class name, ground-truth boxes)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("per-class AP")
    fig.tight_layout()
    return _save(fig, Path(path))


def pr_curves_all(details: CocoDetails, path: str | Path) -> Path:
    """Precision against recall, mean over the classes with ground truth, at IoU 0.5 and 0.75."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for iou in PR_IOUS:
        recall, precision = pr_curve(details, iou)
        ax.plot(recall, precision, color=_COLOURS[iou], label=f"IoU {iou:g}: AP {np.nanmean(precision):.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title("precision-recall, all classes")
    fig.tight_layout()
    return _save(fig, Path(path))


def pr_curves_per_class(details: CocoDetails, path: str | Path) -> Path:
    """One small panel per class (with ground truth) with its curves at IoU 0.5 and 0.75.

    The panels are drawn into one set of axes, each a unit square at its own offset: 80 real
    subplots take matplotlib ~18 CPU seconds to lay out, this takes well under one."""
    ks = [k for k in range(len(details.cat_ids)) if details.gt_counts[k] > 0] or [0]
    cols = min(len(ks), 10 if len(ks) > 30 else 5)
    rows = math.ceil(len(ks) / cols)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 * cols + 0.4, 1.55 * rows + 0.6))
    for i, k in enumerate(ks):
        row, col = divmod(i, cols)
        x0, y0 = col * 1.2, -row * 1.4
        ax.add_patch(plt.Rectangle((x0, y0), 1, 1, fill=False, linewidth=0.6, edgecolor="0.6"))
        for v in (0.25, 0.5, 0.75):  # a light grid: recall and precision quarters
            ax.plot([x0 + v, x0 + v], [y0, y0 + 1], color="0.9", linewidth=0.5)
            ax.plot([x0, x0 + 1], [y0 + v, y0 + v], color="0.9", linewidth=0.5)
        for iou in PR_IOUS:
            recall, precision = pr_curve(details, iou, k)
            ax.plot(x0 + recall, y0 + np.nan_to_num(precision, nan=0.0), color=_COLOURS[iou], linewidth=1.1)
        ap50 = pr_curve(details, 0.5, k)[1].mean()
        ax.text(x0 + 0.5, y0 + 1.04, f"{details.names[k]} ({ap50:.2f})", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.05, cols * 1.2 - 0.15)
    ax.set_ylim(-(rows - 1) * 1.4 - 0.05, 1.25)
    ax.set_aspect("equal")
    ax.set_axis_off()
    fig.suptitle("precision (up, 0-1) against recall (across, 0-1) per class; blue IoU 0.5, orange IoU 0.75; "
                 "(AP50)", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92)
    return _save(fig, Path(path))


def confusion_picture(matrix: np.ndarray, names: list[str], path: str | Path, score_threshold: float,
                      iou_threshold: float) -> Path:
    """The confusion matrix coloured by each true class's share (row-normalised), with counts when small."""
    labels = list(names) + ["background"]
    totals = matrix.sum(axis=1, keepdims=True)
    shares = matrix / np.where(totals > 0, totals, 1)
    plt = _pyplot()
    side = min(14.0, 2.5 + 0.42 * len(labels))
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    small = len(labels) <= 25
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8 if small else 5)
    ax.set_yticks(ticks, labels, fontsize=8 if small else 5)
    if small:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class (background: missed ground truth)")
    ax.set_ylabel("true class (background: false detection)")
    ax.set_title(f"confusion matrix (score >= {score_threshold:g}, IoU >= {iou_threshold:g})", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's row")
    fig.tight_layout()
    return _save(fig, Path(path))


def write_eval_pictures(details: CocoDetails, folder: str | Path) -> list[Path]:
    """Every picture of ``details`` into ``folder`` (created); returns the files written."""
    from ssdbench.eval.confusion import IOU_THRESHOLD, SCORE_THRESHOLD

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [per_class_ap_bars(details, folder / "per_class_ap.png"),
               pr_curves_all(details, folder / "pr_curves.png"),
               pr_curves_per_class(details, folder / "pr_curves_per_class.png")]
    if details.confusion is not None:
        written.append(confusion_picture(details.confusion, details.names, folder / "confusion_matrix.png",
                                         SCORE_THRESHOLD, IOU_THRESHOLD))
    return written
