"""Model family description: every SSD-ResNet member is one `ModelSpec`.

The values of ``ssd300_r34`` and ``ssd1200_r34`` are MLPerf's (benchmark.md §1-2); ``ssd128_mini`` is the
small CPU member used by the demo and the tests: the same architecture (ResNet basic-block trunk cut
after layer3 with layer3 at stride 1, bias-only extra blocks, 3x3 heads) at 1/4 width, fewer blocks
and a 128x128 input, so that it trains on two CPU cores in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExtraBlock:
    """One additional block: Conv1x1(in->mid) + ReLU + Conv3x3(mid->out, stride, pad) + ReLU."""

    mid: int
    out: int
    stride: int
    padding: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: int  # square input, pixels
    num_classes: int = 81  # index 0 is background
    # Trunk: ResNet basic blocks. widths = (stem, layer1, layer2, layer3); blocks per layer.
    trunk_widths: tuple[int, int, int, int] = (64, 64, 128, 256)
    trunk_blocks: tuple[int, int, int] = (3, 4, 6)  # ResNet34's first three stages
    extras: tuple[ExtraBlock, ...] = ()
    head_stride: int = 1  # SSD1200 heads use stride 3 (benchmark.md §1)
    boxes_per_cell: tuple[int, ...] = (4, 6, 6, 6, 4, 4)
    # Default boxes (benchmark.md §2).
    steps: tuple[int, ...] = ()
    scales: tuple[int, ...] = ()  # pixels, one more than levels
    aspect_ratios: tuple[tuple[int, ...], ...] = ()
    fk_integer_division: bool = False  # SSD1200: f_k = input // step; SSD300: f_k = input / step
    grid_sizes: tuple[int, ...] = ()  # head output grids (number of cells per side), per level
    feature_sizes: tuple[int, ...] = ()  # feature-map sizes fed to the heads, per level
    variances: tuple[float, float] = (0.1, 0.2)
    description: str = field(default="", compare=False)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return (self.trunk_widths[3],) + tuple(e.out for e in self.extras)

    @property
    def num_levels(self) -> int:
        return len(self.grid_sizes)

    @property
    def num_boxes(self) -> int:
        return sum(g * g * n for g, n in zip(self.grid_sizes, self.boxes_per_cell))


_R34_EXTRAS_300 = (
    ExtraBlock(256, 512, 2, 1),
    ExtraBlock(256, 512, 2, 1),
    ExtraBlock(128, 256, 2, 1),
    ExtraBlock(128, 256, 1, 0),
    ExtraBlock(128, 256, 1, 0),
)
_R34_EXTRAS_1200 = (
    ExtraBlock(256, 512, 2, 1),
    ExtraBlock(256, 512, 2, 1),
    ExtraBlock(128, 256, 2, 1),
    ExtraBlock(128, 256, 2, 0),
    ExtraBlock(128, 256, 1, 0),
)
_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))

SPECS: dict[str, ModelSpec] = {
    "ssd300_r34": ModelSpec(
        name="ssd300_r34",
        input_size=300,
        extras=_R34_EXTRAS_300,
        steps=(8, 16, 32, 64, 100, 300),
        scales=(21, 45, 99, 153, 207, 261, 315),
        aspect_ratios=_RATIOS,
        grid_sizes=(38, 19, 10, 5, 3, 1),
        feature_sizes=(38, 19, 10, 5, 3, 1),
        description="MLPerf Training SSD300 with the modified ResNet34 backbone (8732 boxes)",
    ),
    "ssd1200_r34": ModelSpec(
        name="ssd1200_r34",
        input_size=1200,
        extras=_R34_EXTRAS_1200,
        head_stride=3,
        steps=(24, 48, 92, 171, 400, 400),
        scales=(84, 180, 396, 612, 828, 1044, 1260),
        aspect_ratios=_RATIOS,
        fk_integer_division=True,
        grid_sizes=(50, 25, 13, 7, 3, 3),
        feature_sizes=(150, 75, 38, 19, 9, 7),
        description="MLPerf Inference SSD-Large, SSD-ResNet34 at 1200x1200 (15130 boxes)",
    ),
    "ssd128_mini": ModelSpec(
        name="ssd128_mini",
        input_size=128,
        trunk_widths=(16, 16, 32, 64),
        trunk_blocks=(1, 1, 2),
        extras=(
            ExtraBlock(64, 128, 2, 1),
            ExtraBlock(64, 128, 2, 1),
            ExtraBlock(32, 64, 2, 1),
            ExtraBlock(32, 64, 2, 1),
        ),
        boxes_per_cell=(4, 6, 6, 4, 4),
        steps=(8, 16, 32, 64, 128),
        scales=(12, 26, 51, 77, 102, 128),
        aspect_ratios=((2,), (2, 3), (2, 3), (2,), (2,)),
        grid_sizes=(16, 8, 4, 2, 1),
        feature_sizes=(16, 8, 4, 2, 1),
        description="Small CPU demo member: 128x128 input, quarter-width ResNet trunk (1524 boxes)",
    ),
}

MODEL_NAMES = tuple(SPECS)


def get_spec(name: str, num_classes: int | None = None) -> ModelSpec:
    """Look up a model by name; `num_classes` (with background) overrides the COCO default of 81."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    spec = SPECS[name]
    if num_classes is not None and num_classes != spec.num_classes:
        from dataclasses import replace

        spec = replace(spec, num_classes=num_classes)
    return spec
