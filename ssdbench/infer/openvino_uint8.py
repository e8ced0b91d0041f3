"""OpenVINO models that take uint8 pixels: benchmark.md §5's normalisation compiled into the graph.

A pool worker (`ssdbench.loadgen.device_pool`) reads the QSL's loaded samples as uint8 (N, 3, S, S)
from shared memory; with OpenVINO it hands them to the model as they are. OpenVINO's
preprocessing API (`openvino.preprocess.PrePostProcessor`) adds in front of the network's input:
u8 -> f32, subtract the ImageNet mean x 255, divide by the std x 255, per channel, in the file's
own input layout (NCHW, or NHWC for TensorFlow-layout files). That is (x / 255 - mean) / std up
to float rounding (about 1e-6 relative), with no torch normalisation and no float32 copy of the
batch in the worker.
"""

from __future__ import annotations

from ssdbench.data.jitter import MEAN, STD

MEAN_255 = [m * 255.0 for m in MEAN]  # the same statistics on the 0..255 scale
STD_255 = [s * 255.0 for s in STD]


def uint8_input_model(model, input_layout: str = "NCHW"):
    """A copy of OpenVINO ``model`` whose first input is u8 pixels in ``input_layout``."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    if input_layout not in ("NCHW", "NHWC"):
        raise ValueError(f"uint8 input needs an NCHW or NHWC model input, not {input_layout!r}")
    ppp = PrePostProcessor(model.clone())
    tensor_info = ppp.input(0)
    tensor_info.tensor().set_element_type(Type.u8).set_layout(Layout(input_layout))
    tensor_info.model().set_layout(Layout(input_layout))
    tensor_info.preprocess().convert_element_type(Type.f32).mean(MEAN_255).scale(STD_255)
    return ppp.build()
