"""The pure SSD-ResNet network: image in, raw per-box regressions and class logits out (benchmark.md §1).

Target encoding and the loss (`encoder.py`, `loss.py`) and decode + NMS (`postprocess.py`) live
beside it, so that training, evaluation, export and LoadGen share this one module.

Module names match the MLPerf references (``additional_blocks.i.{0,2}``, ``loc.i``, ``conf.i``) and
torchvision for the trunk (``backbone.conv1``, ``backbone.layer3.0.downsample.0``, ...), which keeps
the weight converters in `weights.py` to a few renames.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ssdbench.model.resnet import build_trunk
from ssdbench.model.specs import ModelSpec, get_spec


def extra_block(in_ch: int, mid: int, out: int, stride: int, padding: int) -> nn.Sequential:
    """Conv1x1(in->mid) + ReLU + Conv3x3(mid->out, stride, padding) + ReLU, with bias, no BN."""
    return nn.Sequential(
        nn.Conv2d(in_ch, mid, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out, kernel_size=3, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
    )


class SSD(nn.Module):
    """SSD with a ResNet trunk, built from a `ModelSpec`.

    forward(images (N, 3, S, S) float, normalised RGB) ->
        locs   (N, 4, B): box regressions (t_cx, t_cy, t_w, t_h) against the default boxes,
        scores (N, C, B): raw class logits, class 0 = background,
    with B = ``spec.num_boxes`` and boxes in `default_boxes(spec.name)` order. Both outputs are
    contiguous NCL tensors (the references' layout), also when the input is channels_last.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        self.backbone = build_trunk(spec)
        blocks, in_ch = [], spec.feature_channels[0]
        for e in spec.extras:
            blocks.append(extra_block(in_ch, e.mid, e.out, e.stride, e.padding))
            in_ch = e.out
        self.additional_blocks = nn.ModuleList(blocks)
        self.loc = nn.ModuleList()
        self.conf = nn.ModuleList()
        for nd, ch in zip(spec.boxes_per_cell, spec.feature_channels):
            self.loc.append(nn.Conv2d(ch, nd * 4, kernel_size=3, stride=spec.head_stride, padding=1))
            self.conf.append(nn.Conv2d(ch, nd * spec.num_classes, kernel_size=3, stride=spec.head_stride,
                                       padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The references: Xavier-uniform on every weight of the extra blocks and heads; the biases
        # keep PyTorch's default uniform init (their `_init_weights` touches only dim > 1 params).
        for module in (*self.additional_blocks, *self.loc, *self.conf):
            for param in module.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, S, S) -> the feature maps fed to the heads, (N, ch_k, F_k, F_k) per level."""
        x = self.backbone(images)
        feats = [x]
        for block in self.additional_blocks:
            x = block(x)
            feats.append(x)
        return feats

    def head(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads on per-level features -> locs (N, 4, B), scores (N, C, B).

        Each level's (N, nd*4, G, G) output is viewed as (N, 4, nd*G*G), exactly as the references
        do: channel c holds coordinate c // nd of box shape c % nd, and within a level the box
        index runs shape-major, then rows, then columns; the same order as `default_boxes`.
        """
        locs, scores = [], []
        for x, loc, conf in zip(feats, self.loc, self.conf):
            n = x.shape[0]
            # reshape, not view: a channels_last output is not viewable in NCHW order.
            locs.append(loc(x).reshape(n, 4, -1))
            scores.append(conf(x).reshape(n, self.num_classes, -1))
        return torch.cat(locs, 2).contiguous(), torch.cat(scores, 2).contiguous()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(images))


def _out_size(size: int, layer: nn.Module) -> int:
    """Output side of a square conv / pooling layer (dilation 1) for an input of side `size`."""
    k, st, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
    return (size + 2 * p - k) // st + 1


def map_sizes(model: SSD, size: int) -> tuple[list[int], list[int]]:
    """Feature-map sides per level and head-grid sides per level for an input of side `size`,
    by conv arithmetic on the model's own layers (no tensors are run)."""
    trunk = model.backbone
    size = _out_size(_out_size(size, trunk.conv1), trunk.maxpool)
    for block in (*trunk.layer1, *trunk.layer2, *trunk.layer3):
        size = _out_size(_out_size(size, block.conv1), block.conv2)
    feats = [size]
    for block in model.additional_blocks:
        feats.append(_out_size(_out_size(feats[-1], block[0]), block[2]))
    return feats, [_out_size(f, loc) for f, loc in zip(feats, model.loc)]


def check_shapes(model: SSD) -> None:
    """Check the model's feature maps, head grids and box count against its spec.

    Raises ValueError naming the level whose feature-map or head-grid size, or whose box count,
    disagrees with ``spec.feature_sizes`` / ``grid_sizes`` / ``num_boxes``.
    """
    spec = model.spec
    sizes, grids = map_sizes(model, spec.input_size)
    checks = (("feature map", sizes, spec.feature_sizes), ("head grid", grids, spec.grid_sizes))
    for what, got_all, want_all in checks:
        for k, (got, want) in enumerate(zip(got_all, want_all)):
            if got != want:
                raise ValueError(f"{spec.name}: level {k} {what} is {got}x{got}, spec says {want}x{want}")
    boxes = sum(g * g * (loc.out_channels // 4) for g, loc in zip(grids, model.loc))
    if len(sizes) != spec.num_levels or boxes != spec.num_boxes:
        raise ValueError(f"{spec.name}: network gives {boxes} boxes on {len(sizes)} levels, "
                         f"spec says {spec.num_boxes} on {spec.num_levels}")


def layer_macs(spec: ModelSpec) -> list[tuple[str, str, int]]:
    """Multiply-accumulates per image of `spec`'s network: (module name, kind, MACs) in call order.

    Counted analytically from shapes (a forward on the meta device, no compute). ``conv``: output
    (C_out, H, W) with kernel (C_in/groups, kh, kw) costs C_out*H*W*C_in/groups*kh*kw; ``bias``: one
    add per conv output element; ``batchnorm``: one scale-and-shift per element (foldable into the
    convs at inference). ReLU, pooling and residual adds are not counted. FLOPs = 2 x MACs.
    benchmark.md §1's 216.6 GMAC for SSD1200 includes the bias and BatchNorm terms (convs alone: 216.4).
    """
    counts: list[tuple[str, str, int]] = []

    def hook(name):
        def record(module, _inputs, output):
            per_image = output[0].numel()
            if isinstance(module, nn.Conv2d):
                kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                counts.append((name, "conv", per_image * kernel))
                if module.bias is not None:
                    counts.append((name, "bias", per_image))
            else:
                counts.append((name, "batchnorm", per_image))
        return record

    with torch.device("meta"):
        meta = SSD(spec)
        for name, module in meta.named_modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                module.register_forward_hook(hook(name))
        with torch.no_grad():
            meta(torch.empty(1, 3, spec.input_size, spec.input_size))
    return counts


def build_model(
    name: str,
    weights: str | os.PathLike | dict | None = None,
    num_classes: int | None = None,
    allow_pickle: bool = False,
    backbone_weights: str | os.PathLike | None = None,
) -> SSD:
    """Build a model by name (``ssd300_r34``, ``ssd1200_r34``, ``ssd128_mini``), optionally with weights.

    `weights`: a file or state dict in any layout `weights.load_weights` knows (our checkpoints, the
    MLPerf inference/training references, torchvision's resnet34 for the trunk only; the pickled
    ``resnet34-ssd1200.pytorch`` only with ``allow_pickle=True``). When `num_classes` is None and
    the weights carry class heads, the class count is taken from them (default 81 otherwise).
    `backbone_weights`: torchvision ImageNet resnet34 file loaded into the trunk (benchmark.md §6);
    ``allow_pickle`` applies to it too.
    """
    from ssdbench.model.weights import infer_num_classes, load_backbone, load_state, read_state_dict

    state = None
    if weights is not None:
        state = read_state_dict(weights, allow_pickle=allow_pickle, model_name=name)
        if num_classes is None:
            num_classes = infer_num_classes(state, get_spec(name))
    model = SSD(get_spec(name, num_classes))
    check_shapes(model)
    if backbone_weights is not None:
        load_backbone(model, backbone_weights, allow_pickle)
    if state is not None:
        load_state(model, state, str(weights) if isinstance(weights, (str, os.PathLike)) else "state dict")
    return model
