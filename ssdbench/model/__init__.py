"""The network and its geometry: model specs (`specs`), default boxes and box codecs (`boxes`),
ResNet-34 backbone and SSD heads (`resnet`, `ssd`), target encoding and loss (`encoder`, `loss`),
decode + class-wise NMS (`postprocess`, `nms`) and weight converters (`weights`). The `ssdbench
model` command lives in `ssdbench.cli.model`."""
