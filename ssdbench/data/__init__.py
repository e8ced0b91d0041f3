"""COCO-format data: the reader (`coco`), JPEG decoding (`decode`), synthetic and embedded datasets
(`synth`, `shapes`, `scene`), training / eval transforms and colour jitter (`transforms`, `jitter`),
the sharded loader (`loader`), the device-side pipeline (`gpu_pipeline`), dataset download and
checks (`download`, `check`) and `ssdbench data` (`cli`)."""
