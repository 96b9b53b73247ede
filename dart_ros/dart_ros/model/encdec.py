"""The DART encoder-decoder pass: N classes on the batch axis over one image's features.

These functions call ``sam3``'s own modules (encoder, decoder, dot-product scoring, box head,
geometry encoder) with the call signatures of ``Sam3Image.forward_grounding`` (sam3 0.1.4,
``sam3/model/sam3_image.py``), but with every class stacked on the batch axis and only the last
decoder layer scored (DART_METHOD.md §1.3, §2.3).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch
from torch import nn


@dataclasses.dataclass
class EncDecOutput:
    """Raw per-class outputs of one image.

    Attributes:
        logits: (N, Q) dot-product logits of the last decoder layer (clamped to ±12 by sam3).
        boxes: (N, Q, 4) boxes, normalised cxcywh in the S×S network frame.
        presence_logits: (N,) presence-token logits (unclamped, as sam3 0.1.4 computes them).
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    presence_logits: torch.Tensor

    @staticmethod
    def cat(parts) -> "EncDecOutput":
        parts = list(parts)
        return EncDecOutput(
            torch.cat([p.logits for p in parts]),
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.presence_logits for p in parts]),
        )

    def scores(self) -> torch.Tensor:
        """(N, Q) σ(logit)·σ(presence), the SAM3 detection score."""
        return self.logits.float().sigmoid() * self.presence_logits.float().sigmoid()[:, None]


def flatten_features(feat: torch.Tensor) -> torch.Tensor:
    """(1, C, P, P) -> (P², 1, C) seq-first, row-major, as ``Sam3Image._get_img_feats``."""
    return feat.flatten(2).permute(2, 0, 1)


def geometry_token(
    sam3: nn.Module, img_feat: torch.Tensor, img_pos: torch.Tensor, feat_size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The image-conditioned CLS token the official processor appends to every text prompt.

    With an empty box prompt the geometry encoder still emits one token that cross-attends to the
    image (DART_METHOD.md §1.4). It depends on the image only, so it is computed once per image
    and shared by all classes.

    Args:
        img_feat, img_pos: (P², 1, C) seq-first features and position encoding.
    Returns:
        tokens (1, 1, C) and mask (1, 1) bool (False = valid).
    """
    encoder = sam3.geometry_encoder
    if hasattr(encoder, "empty_prompt_token"):  # dart_ros's exact fast path (model/build.py)
        return encoder.empty_prompt_token(img_feat, img_pos)
    from sam3.model.geometry_encoders import Prompt

    dev = img_feat.device
    prompt = Prompt(
        box_embeddings=torch.zeros(0, 1, 4, device=dev),
        box_mask=torch.zeros(1, 0, device=dev, dtype=torch.bool),
    )
    return sam3.geometry_encoder(
        geo_prompt=prompt, img_feats=[img_feat], img_sizes=[feat_size], img_pos_embeds=[img_pos]
    )


def encode_decode(
    sam3: nn.Module,
    img_feat: torch.Tensor,
    img_pos: torch.Tensor,
    feat_size: Tuple[int, int],
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
) -> EncDecOutput:
    """Run encoder, decoder, scoring and box head for N prompts over one image.

    Args:
        img_feat, img_pos: (P², 1, C) seq-first; broadcast to the N prompts without a copy.
        feat_size: (P, P).
        prompt: (T, N, C) seq-first prompt tokens; prompt_mask: (N, T) bool, True = padding.
    """
    n = prompt.shape[1]
    src = img_feat.expand(-1, n, -1)
    pos = img_pos.expand(-1, n, -1)
    transformer = sam3.transformer
    # Fresh lists: the encoder rewrites its src/src_pos arguments in place.
    memory = transformer.encoder(
        src=[src],
        src_key_padding_mask=None,
        src_pos=[pos],
        prompt=prompt,
        prompt_pos=torch.zeros_like(prompt),
        prompt_key_padding_mask=prompt_mask,
        feat_sizes=[feat_size],
    )
    decoder = transformer.decoder
    tgt = decoder.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
    hs, ref_boxes, presence, _ = decoder(
        tgt=tgt,
        memory=memory["memory"],
        memory_key_padding_mask=memory["padding_mask"],
        pos=memory["pos_embed"],
        reference_boxes=None,
        level_start_index=memory["level_start_index"],
        spatial_shapes=memory["spatial_shapes"],
        valid_ratios=memory["valid_ratios"],
        tgt_mask=None,
        memory_text=prompt,
        text_attention_mask=prompt_mask,
        apply_dac=False,
    )
    from sam3.model.model_misc import inverse_sigmoid

    hs_last = hs[-1:].transpose(1, 2)  # (1, N, Q, C) batch-first
    ref_last = ref_boxes[-1].transpose(0, 1)  # (N, Q, 4)
    logits = sam3.dot_prod_scoring(hs_last, prompt, prompt_mask)[0, :, :, 0]
    boxes = (inverse_sigmoid(ref_last) + decoder.bbox_embed(hs_last[0])).sigmoid()
    return EncDecOutput(logits=logits, boxes=boxes, presence_logits=presence[-1, 0])
