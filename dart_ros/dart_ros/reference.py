"""The official single-prompt SAM3 path, class by class: the correctness oracle and the naive
baseline of the benchmark.

For every class it runs what ``Sam3Processor.set_image`` + ``set_text_prompt`` run (sam3 0.1.4):
``backbone.forward_image`` (all FPN levels), ``backbone.forward_text([name])`` and
``Sam3Image.forward_grounding`` with an empty geometric prompt. ``text_only`` composes the prompt
from the 32 text tokens alone, as the DART reference does, through sam3's own
``_run_encoder``/``_run_decoder``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dart_ros.model.encdec import EncDecOutput


def _find_stage(device: torch.device):
    from sam3.model.data_misc import FindStage

    return FindStage(
        img_ids=torch.tensor([0], device=device, dtype=torch.long),
        text_ids=torch.tensor([0], device=device, dtype=torch.long),
        input_boxes=None,
        input_boxes_mask=None,
        input_boxes_label=None,
        input_points=None,
        input_points_mask=None,
    )


@torch.inference_mode()
def reference_outputs(
    sam3: torch.nn.Module,
    pixels: torch.Tensor,
    class_names: Sequence[str],
    prompt_mode: str = "official",
    share_backbone: bool = False,
) -> EncDecOutput:
    """Per-class raw outputs of the official path for one (1, 3, S, S) normalised image.

    Args:
        share_backbone: run the backbone once for all classes (the first DART step) instead of
            once per class (what a naive caller of the processor does).
    """
    device = pixels.device
    find = _find_stage(device)
    shared = sam3.backbone.forward_image(pixels) if share_backbone else None
    logits, boxes, presence = [], [], []
    for name in class_names:
        backbone_out = dict(shared) if shared is not None else sam3.backbone.forward_image(pixels)
        backbone_out.update(sam3.backbone.forward_text([name], device=device))
        if prompt_mode == "official":
            # forward_grounding pops backbone_fpn when there is no mask head: it gets a copy.
            out = sam3.forward_grounding(
                backbone_out=dict(backbone_out),
                find_input=find,
                find_target=None,
                geometric_prompt=sam3._get_dummy_prompt(),
            )
        elif prompt_mode == "text_only":
            prompt = backbone_out["language_features"]
            mask = backbone_out["language_mask"]
            backbone_out, encoder_out, _ = sam3._run_encoder(dict(backbone_out), find, prompt, mask)
            out = {"encoder_hidden_states": encoder_out["encoder_hidden_states"]}
            out, _ = sam3._run_decoder(
                memory=encoder_out["encoder_hidden_states"],
                pos_embed=encoder_out["pos_embed"],
                src_mask=encoder_out["padding_mask"],
                out=out,
                prompt=prompt,
                prompt_mask=mask,
                encoder_out=encoder_out,
            )
        else:
            raise ValueError(f"unknown prompt mode {prompt_mode!r}")
        logits.append(out["pred_logits"][0, :, 0])
        boxes.append(out["pred_boxes"][0])
        presence.append(out["presence_logit_dec"].reshape(-1)[:1])
    return EncDecOutput(torch.stack(logits), torch.stack(boxes), torch.cat(presence))
