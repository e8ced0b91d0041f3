"""COCO box mAP: detections to COCO results and the 12 COCO stats with faster-coco-eval or
pycocotools (`coco`), and one evaluation pass of a model over a loader, sharded over ranks
(`evaluate`). Used by training (`ssdbench.train`), `ssdbench eval` and LoadGen's accuracy mode."""
