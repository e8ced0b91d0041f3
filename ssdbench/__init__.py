"""ssdbench: MLPerf SSD-ResNet34 training and SSD-Large inference in PyTorch.

Public API (imported lazily so that `import ssdbench` stays light):
- ``build_model(name, weights=None)``: the pure network, returning ``(locs, scores)`` shaped
  (N, 4, B) and (N, num_classes, B).
- ``default_boxes(name)``: (B, 4) xywh default boxes, normalised and clamped, in head order.
- ``postprocess(locs, scores, model_name)``: batched decode + class-wise NMS.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "build_model": "ssdbench.model.ssd",
    "default_boxes": "ssdbench.model.boxes",
    "postprocess": "ssdbench.model.postprocess",
    "MODEL_NAMES": "ssdbench.model.specs",
    "get_spec": "ssdbench.model.specs",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssdbench' has no attribute {name!r}")
