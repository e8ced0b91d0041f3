"""SSD-Large inference: MLPerf LoadGen settings, sample library, batching SUT and report
(`settings`, `qsl`, `sut`, `report`, `loadgen_cli`), accuracy-log mAP (`accuracy`), eager /
compiled / ONNX Runtime backends (`backends`), ONNX export (`export`), the space-to-depth stem
(`space_to_depth`) and `ssdbench predict` (`predict`)."""
