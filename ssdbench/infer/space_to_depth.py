"""Space-to-depth first convolution (benchmark.md §7, the Cloud TPU seed's ``space_to_depth`` option).

The input (N, 3, 1200, 1200) is rearranged into (N, 12, 600, 600) by moving each 2x2 pixel block
into channels, and the trunk's 7x7 / stride 2 / pad 3 ``conv1`` becomes a 4x4 / stride 1 conv on
that rearranged input with exactly the same output. Accelerators with wide matrix units prefer
12 input channels at stride 1 over 3 channels at stride 2.

Channel order of the rearranged input (that of ``torch.nn.functional.pixel_unshuffle``)::

    s2d[n, c * 4 + dy * 2 + dx, y, x] = image[n, c, 2 * y + dy, 2 * x + dx]

(The TPU reference puts the channel innermost; any fixed order works as long as the kernel is
rearranged to match, and this one is what PyTorch ships as a single op.)

Kernel derivation. The 7x7/s2/p3 conv reads input row ``r = 2*y + ky - 3`` for ky in 0..6.
Pad the kernel to 8x8 with one zero row/column in front (ky' = ky + 1, ky' in 0..7): then
``r = 2*(y - 2) + ky'``; writing ky' = 2*a + dy (a in 0..3, dy in 0..1) gives s2d row
``Y = y - 2 + a``. So output row y reads s2d rows y-2 .. y+1: a 4x4 stride-1 conv whose input is
padded by 2 before and 1 after in each spatial dimension, with weight
``w4[o, c*4 + dy*2 + dx, a, b] = w8[o, c, 2a + dy, 2b + dx]``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 2  # benchmark.md §7: 1200x1200x3 -> 600x600x12


def space_to_depth(images: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """(N, C, H, W) -> (N, C*block*block, H/block, W/block); H and W must be multiples of block."""
    if images.dim() != 4:
        raise ValueError(f"space_to_depth expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % block or w % block:
        raise ValueError(f"space_to_depth: image size {h}x{w} is not a multiple of the block {block}")
    return F.pixel_unshuffle(images, block)


def space_to_depth_weight(weight: torch.Tensor) -> torch.Tensor:
    """Rearrange a 7x7 kernel (O, C, 7, 7) into the equivalent 4x4 kernel (O, 4*C, 4, 4)."""
    out_ch, in_ch, kh, kw = weight.shape
    if (kh, kw) != (7, 7):
        raise ValueError(f"space_to_depth_weight expects a 7x7 kernel, got {kh}x{kw}")
    w8 = F.pad(weight, (1, 0, 1, 0))  # one zero row/column in front: (O, C, 8, 8)
    w8 = w8.reshape(out_ch, in_ch, 4, 2, 4, 2)  # (O, C, a, dy, b, dx)
    return w8.permute(0, 1, 3, 5, 2, 4).reshape(out_ch, in_ch * 4, 4, 4)  # channel = c*4+dy*2+dx


class SpaceToDepthConv(nn.Module):
    """4x4 / stride 1 conv on (N, 4*C, H/2, W/2) input, equal to a 7x7/s2/p3 conv on (N, C, H, W).

    Output (N, O, H/2, W/2), the same as the replaced conv's for even H and W.
    """

    # Asymmetric spatial padding (left, right, top, bottom) derived in the module docstring.
    PADDING = (2, 1, 2, 1)

    def __init__(self, conv7: nn.Conv2d):
        super().__init__()
        _check_stem_conv(conv7)
        self.conv = nn.Conv2d(
            conv7.in_channels * BLOCK * BLOCK, conv7.out_channels, kernel_size=4, stride=1, padding=0,
            bias=conv7.bias is not None,
        ).to(conv7.weight.device, conv7.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(space_to_depth_weight(conv7.weight))
            if conv7.bias is not None:
                self.conv.bias.copy_(conv7.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.PADDING))


def _check_stem_conv(conv: nn.Module) -> None:
    ok = (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (7, 7)
        and conv.stride == (2, 2)
        and conv.padding == (3, 3)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not ok:
        raise ValueError(f"space-to-depth needs a 7x7/stride 2/pad 3 first conv, got {conv}")


def apply_space_to_depth(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of `model` (an SSD with ``backbone.conv1``) whose forward takes space-to-depth input.

    The returned model expects ``space_to_depth(images)``, i.e. (N, 12, S/2, S/2), and returns the
    same ``(locs, scores)`` as the original on ``images`` (N, 3, S, S). It carries
    ``space_to_depth = True`` so callers can tell which input it wants.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "conv1"):
        raise ValueError("apply_space_to_depth: model has no backbone.conv1 (expected an ssdbench SSD)")
    if getattr(model, "space_to_depth", False):
        raise ValueError("apply_space_to_depth: model already takes space-to-depth input")
    out = model if inplace else copy.deepcopy(model)
    out.backbone.conv1 = SpaceToDepthConv(out.backbone.conv1)
    out.space_to_depth = True
    return out
