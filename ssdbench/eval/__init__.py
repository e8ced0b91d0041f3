"""COCO box mAP: detections to COCO results and the 12 COCO stats with faster-coco-eval or
pycocotools (`coco_scoring`), one evaluation pass of a model over a loader, sharded over ranks, or of
an inference backend in one process (`evaluate`), and the per-class analysis. Used by training
(`ssdbench.train`), `ssdbench eval` and LoadGen's accuracy mode."""
