"""Inference on any image size and any backend: eager / compiled / ONNX Runtime backends behind one
`predict` (`backends`), ONNX export with post-processing outside or inside the graph (`export`),
the space-to-depth stem (`space_to_depth`), `ssdbench predict`'s library side (`predict`) and
pictures of detections (`draw`). Every backend returns `ssdbench.model.postprocess.PaddedDetections`."""
