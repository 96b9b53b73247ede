"""Architecture numbers of the SAM3 image model, full size and tiny.

The full configuration repeats the constants of ``sam3.model_builder`` (sam3 0.1.4) so that a
``sam3.pt`` checkpoint loads with no missing detector keys. The tiny configuration keeps every
structural choice (windowed + global ViT blocks with 2-D RoPE, tiled absolute position embedding,
simple-FPN neck, text transformer + resizer, fusion encoder, decoder with presence token and boxRPB,
dot-product scoring, geometry encoder) and only shrinks depths and widths, so that tests exercise the
production code path on a CPU in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Sam3Arch:
    """Every number that differs between SAM3 variants built by :mod:`dart_ros.model.build`."""

    name: str
    # ViT trunk
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.625
    window_size: int = 24
    global_blocks: Tuple[int, ...] = (7, 15, 23, 31)
    pretrain_img_size: int = 336
    # Shared transformer width (neck output, text resizer, encoder, decoder, scoring)
    d_model: int = 256
    # Text encoder
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    context_length: int = 32
    vocab_size: int = 49408
    # Encoder / decoder
    num_heads_encdec: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    geometry_layers: int = 3
    scoring_hidden: int = 2048
    # Input size the architecture is normally run at
    default_image_size: int = 1008

    def feature_size(self, image_size: int) -> int:
        """Side P of the stride-14 feature map for a square input of ``image_size``."""
        if image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by the patch size {self.patch_size}")
        return image_size // self.patch_size


FULL = Sam3Arch(name="full")

TINY = Sam3Arch(
    name="tiny",
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    window_size=8,
    global_blocks=(1, 3),
    pretrain_img_size=112,
    d_model=64,
    text_width=64,
    text_heads=4,
    text_layers=2,
    num_heads_encdec=4,
    ffn_dim=128,
    encoder_layers=2,
    decoder_layers=2,
    num_queries=20,
    geometry_layers=1,
    scoring_hidden=128,
    default_image_size=224,
)

ARCHS = {a.name: a for a in (FULL, TINY)}


def get_arch(name: str) -> Sam3Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {sorted(ARCHS)}") from None
