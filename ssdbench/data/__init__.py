"""COCO-format data: the reader of datasets and annotation files (`coco`), JPEG decoding
(`decode`), the synthetic and embedded dataset (`synth`), the augmentation plan (`augment`), its
CPU executor and the eval / inference preprocessing (`transforms`), colour jitter (`jitter`), the
sharded loader (`loader`), the device-side pipeline (`gpu_pipeline`), dataset download and
validation (`download`, `validate`, with worker processes from `pool`). The ``ssdbench data``
command lives in `ssdbench.cli.data`."""
