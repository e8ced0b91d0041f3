"""TensorBoard logging of a training run (`--tensorboard`): ``RUN/tensorboard/``.

Scalars (x axis: the global training step): ``train/loss``, ``train/lr``,
``train/images_per_s`` at every metrics window; at every recorded score ``eval/mAP``,
``eval/AP50``, ``eval/AP75`` and ``eval_ap/<class>`` (AP@[.5:.95] of each class with ground
truth), at the step the evaluated network was trained to. Images: ``eval/predictions``, a few
validation images with the detections above `SCORE_THRESHOLD` (class colour, name, score) and the
ground truth (thin white), at each evaluation. Rank 0 writes. The writer is torch's
`torch.utils.tensorboard.SummaryWriter`, which needs the ``tensorboard`` package (the optional
extra ``pip install "ssdbench[tensorboard]"``); without it `require_tensorboard` is a one-line
error. View with ``tensorboard --logdir RUN/tensorboard``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ssdbench.errors import CliError

SCORE_THRESHOLD = 0.3  # detections drawn (as the demo's pictures)
IMAGES = 4  # validation images drawn at each evaluation
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (170, 110, 40), (0, 128, 128))


def require_tensorboard() -> None:
    """CliError (one line) unless the writer can be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise CliError("--tensorboard needs the tensorboard package: pip install tensorboard "
                       "(or pip install \"ssdbench[tensorboard]\")") from None


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_") or "class"


class TensorBoardLog:
    """Writes one run's TensorBoard events; ``val_set`` (a `data.coco.CocoDetection`) gives the
    images drawn at each evaluation."""

    def __init__(self, folder: str | Path, val_set, images: int = IMAGES):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.val_set, self.images = val_set, images
        self.eval_steps: dict[int, int] = {}  # epoch -> the step its network was trained to

    def window(self, record: dict) -> None:
        """One metrics window (`train.loop`): loss, lr, images/s at its step."""
        step = int(record["step"])
        self.writer.add_scalar("train/loss", float(record["loss"]), step)
        self.writer.add_scalar("train/lr", float(record["lr"]), step)
        if record.get("img_s") is not None:
            self.writer.add_scalar("train/images_per_s", float(record["img_s"]), step)

    def evaluated(self, epoch: int, step: int, array: np.ndarray | None) -> None:
        """The network after ``epoch`` was run over the validation set: remember its step and draw
        a few of its images (``array``: the COCO results, `async_eval.results_to_array`)."""
        self.eval_steps[int(epoch)] = int(step)
        if array is not None and self.images > 0:
            pictures = [self._drawn(i, array) for i in range(min(self.images, len(self.val_set)))]
            pictures = [p for p in pictures if p is not None]
            if pictures:
                self.writer.add_images("eval/predictions", np.stack(_same_size(pictures)), step, dataformats="NHWC")
        self.writer.flush()

    def scored(self, score) -> None:
        """A recorded score (`async_eval.Score`): mAP, AP50, AP75 and each class's AP."""
        step = self.eval_steps.get(int(score.epoch), int(score.epoch))
        for index, name in ((0, "mAP"), (1, "AP50"), (2, "AP75")):
            self.writer.add_scalar(f"eval/{name}", float(score.stats[index]), step)
        if score.details is not None:
            from ssdbench.eval.per_class import per_class_rows

            for row in per_class_rows(score.details):
                if row["ap"] is not None:
                    self.writer.add_scalar(f"eval_ap/{_tag(row['name'])}", row["ap"], step)
        self.writer.flush()

    def _drawn(self, i: int, array: np.ndarray) -> np.ndarray | None:
        """Validation image ``i`` with its detections and ground truth, uint8 (H, W, 3)."""
        from PIL import Image, ImageDraw

        try:
            image = Image.fromarray(self.val_set.read_image(i))
        except Exception:  # noqa: BLE001  an unreadable image is skipped, as in evaluation
            return None
        draw = ImageDraw.Draw(image)
        gt_boxes, _ = self.val_set.annotations(i)
        for box in gt_boxes:
            draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
        image_id = self.val_set.ids[i]
        names = dict(zip(self.val_set.cat_ids, self.val_set.cat_names))
        rows = array[(array[:, 0] == image_id) & (array[:, 5] >= SCORE_THRESHOLD)]
        for _, x, y, w, h, score, cat in rows:
            colour = _PALETTE[int(cat) % len(_PALETTE)]
            draw.rectangle([x, y, x + w, y + h], outline=colour, width=3)
            draw.text((x + 3, y + 2), f"{names.get(int(cat), int(cat))} {score:.2f}", fill=colour)
        image.thumbnail((320, 320))
        return np.asarray(image)

    def close(self) -> None:
        self.writer.close()


def _same_size(pictures: list[np.ndarray]) -> list[np.ndarray]:
    """Pad to the largest height and width (add_images takes one shape)."""
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    return [np.pad(p, ((0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0))) for p in pictures]
