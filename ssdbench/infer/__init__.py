"""Inference on any image size and any backend: eager / compiled / ONNX Runtime / OpenVINO backends
behind one `predict` (`backends`, with their common base and `BackendOptions` in `backend_base` and
the model-file runtimes in `file_backends`), model files and their layouts (`model_file`, described
by `file_info`), ONNX export with post-processing outside or inside the graph (`export`), INT8
quantization (`quantize`), the space-to-depth stem (`space_to_depth`), `ssdbench predict`'s library
side (`predict`) and pictures of detections (`draw`). Every backend returns
`ssdbench.model.postprocess.PaddedDetections`."""
