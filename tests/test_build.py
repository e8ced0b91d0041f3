"""Building a run: the dataset name logged for MLPerf (closed division needs "coco2017")."""

import pytest

from ssdbench.train.config import resolve_config


def _coco(root, categories: int, split: str = "train"):
    from data_fixtures import write_coco

    cats = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(categories)]
    image = {"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    write_coco(root, split, [image], [ann], cats, write_images=False)
    return root


@pytest.mark.parametrize("categories, split, given, expected", [
    (80, "train", None, "coco2017"),  # COCO's 80 categories in instances_train2017.json
    (79, "train", None, "mycoco"),  # another category set: the folder name (open division)
    (80, "minitrain", None, "mycoco"),  # instances_minitrain2017.json is not COCO's train file
    (3, "train", "coco2017", "coco2017"),  # --dataset-name overrides
])
def test_dataset_name_detection(tmp_path, categories, split, given, expected):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.train.build import dataset_name

    root = _coco(tmp_path / "mycoco", categories, split)
    cfg = resolve_config("mlperf", overrides={"dataset_name": given, "train_split": split})
    assert dataset_name(cfg, root, CocoDetection(root, split)) == expected
    (root / "ssdbench_synth.json").write_text("{}")  # the embedded dataset's marker
    assert dataset_name(cfg, root, CocoDetection(root, split)) == (given or "synthetic")
