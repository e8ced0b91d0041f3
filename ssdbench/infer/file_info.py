"""`ssdbench model info --model-file F`: the interface recognised in a model file, as text.

Inputs and outputs (names, shapes) come from OpenVINO's reading of the file (it reads .onnx, IR and
TensorFlow frozen graphs alike); the layout and its conventions from `ssdbench.infer.model_file`.
"""

from __future__ import annotations

from ssdbench.infer import model_file as MF

# per layout: (box order, label convention, where post-processing runs); sources in docs/model_files.md
CONVENTIONS = {
    "raw": ("default-box offsets (locs), decoded here (benchmark.md §2)",
            "scores over C classes, 0 = background", "ssdbench's, in PyTorch, after the file (benchmark.md §4)"),
    "padded": ("[left, top, right, bottom] normalised", "contiguous 1..C-1, 0 = padding",
               "inside the file (ssdbench's export); 200 per image, padded"),
    "official": ("[left, top, right, bottom] normalised (xmin, ymin, xmax, ymax)",
                 "contiguous 1..80, kept (scored with the inverse label map)",
                 "inside the file (MLPerf's resnet34-ssd1200.onnx); one image, unpadded"),
    "tf": ("[ymin, xmin, ymax, xmax] normalised", "contiguous 1..80 (float), kept (scored with the inverse label map)",
           "inside the file (MLPerf's TensorFlow model); read to the first score < 0.05"),
}


def _shape(port) -> str:
    return str(port.get_partial_shape()).replace("?", "N")


def describe(model_file) -> str:
    """Lines describing ``model_file`` (an .onnx, IR .xml, TensorFlow .pb or a quantize folder)."""
    import openvino as ov

    from ssdbench.infer.backends import model_file_network
    from ssdbench.infer.file_backends import read_model

    path, sidecar = MF.resolve_path(model_file)
    model = read_model(ov.Core(), path)
    info = MF.inspect_openvino(path, model, sidecar)
    boxes, labels, post = CONVENTIONS[info.layout]
    size = f" {info.input_size}x{info.input_size};" if info.input_size else ""
    lines = [f"{path}: {info.format} file, layout {info.layout}{' (INT8)' if info.quantized else ''}",
             (f"  network            {model_file_network(model_file)} (preprocessing and input size; "
              f"{'named by the file' if info.model_name else 'the file names none: by its input size, else SSD-Large'})"),
             (f"  input              {info.input_name} {_shape(model.inputs[0])} float32 {info.input_layout},"
              f"{size} RGB, /255, ImageNet mean/std (benchmark.md §5)"),
             f"  batch              {info.batch if info.batch else 'dynamic'}"]
    for port in model.outputs:
        names = sorted(port.get_names(), key=lambda n: (n not in (*MF.RAW_OUTPUTS, *MF.DETECTION_OUTPUTS,
                                                                  *MF.TF_OUTPUTS), n))  # fmt: skip
        lines.append(f"  output             {names[0]} {_shape(port)} {port.get_element_type().get_type_name()}")
    lines += [f"  boxes              {boxes}", f"  labels             {labels}", f"  post-processing    {post}"]
    return "\n".join(lines)
