"""COCO-format data: the reader (`coco`), JPEG decoding (`decode`), synthetic and embedded datasets
(`synth`, `shapes`, `scene`), the augmentation plan (`augment`), its CPU executor and the eval /
inference preprocessing (`transforms`), colour jitter (`jitter`), the sharded loader (`loader`),
the device-side pipeline (`gpu_pipeline`), dataset download and checks (`download`, `check`, with
worker processes from `pool`). The ``ssdbench data`` command lives in `ssdbench.cli.data`."""
