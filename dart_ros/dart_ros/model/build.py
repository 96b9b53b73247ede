"""Device-agnostic assembly of the SAM3 image model from the classes of the ``sam3`` package.

``sam3.model_builder.build_sam3_image_model`` hard-codes CUDA in two constructors (the position
encoding's precompute and the decoder's boxRPB coordinate cache), downloads weights when no path is
given and only knows one size. This module builds the same object graph from the same classes
(sam3 0.1.4, ``sam3/model_builder.py``), parameterised by :class:`~dart_ros.model.arch.Sam3Arch`
and the input size, on any device. Detection-only: no segmentation head, no SAM2 neck, no tracker.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import nn

from dart_ros.model.arch import Sam3Arch


@functools.lru_cache(maxsize=1)
def bpe_path() -> str:
    """Path of the CLIP BPE vocabulary shipped inside the ``open-clip-torch`` wheel.

    The ``sam3`` 0.1.4 wheel does not ship ``bpe_simple_vocab_16e6.txt.gz`` although its default
    path points at it; the file is byte-identical to the one open_clip ships. The package is
    located, not imported: importing open_clip imports transformers (and through it scikit-learn)
    where they are installed, seconds of every start for one file name.
    """
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open-clip-torch is required: it ships the CLIP BPE vocabulary that SAM3's tokenizer needs")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(path):
        raise RuntimeError(f"the CLIP BPE vocabulary is missing from open_clip: {path}")
    return path


def position_encoding(arch: Sam3Arch) -> nn.Module:
    from sam3.model.position_encoding import PositionEmbeddingSine

    # precompute_resolution=None: sam3 would allocate on "cuda" and at the wrong sizes (S/4 … S/32).
    return PositionEmbeddingSine(num_pos_feats=arch.d_model, normalize=True, scale=None, temperature=10000)


def build_vit_trunk(arch: Sam3Arch, image_size: int) -> nn.Module:
    """The ViTDet trunk; RoPE tables are built for ``image_size`` by the constructor itself."""
    from sam3.model.vitdet import ViT

    arch.feature_size(image_size)  # validates divisibility
    return ViT(
        img_size=image_size,
        pretrain_img_size=arch.pretrain_img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=arch.global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=arch.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        compile_mode=None,
    )


def build_text_encoder(arch: Sam3Arch) -> nn.Module:
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer

    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path()),
        d_model=arch.d_model,
        width=arch.text_width,
        heads=arch.text_heads,
        layers=arch.text_layers,
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
    )
    # sam3 allocates these with torch.empty and relies on a checkpoint to fill them; random-weight
    # models (tests, benchmarks) need real values (CLIP's initialisation).
    nn.init.normal_(text.encoder.positional_embedding, std=0.01)
    nn.init.normal_(text.encoder.text_projection, std=arch.text_width**-0.5)
    return text


def _mha(arch: Sam3Arch, batch_first: Optional[bool] = None, dropout: float = 0.1) -> nn.Module:
    from sam3.model.model_misc import MultiheadAttentionWrapper

    kwargs = {} if batch_first is None else {"batch_first": batch_first}
    return MultiheadAttentionWrapper(num_heads=arch.num_heads_encdec, dropout=dropout, embed_dim=arch.d_model, **kwargs)


def build_transformer(arch: Sam3Arch) -> nn.Module:
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import TransformerWrapper

    encoder_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=arch.d_model,
        dim_feedforward=arch.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_mha(arch, batch_first=True),
        cross_attention=_mha(arch, batch_first=True),
    )
    encoder = TransformerEncoderFusion(
        layer=encoder_layer,
        num_layers=arch.encoder_layers,
        d_model=arch.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=arch.d_model,
        dim_feedforward=arch.ffn_dim,
        dropout=0.1,
        cross_attention=_mha(arch),
        n_heads=arch.num_heads_encdec,
        use_text_cross_attention=True,
    )
    # resolution/stride left unset: sam3 would precompute the boxRPB coordinates on "cuda". The
    # decoder then builds its coordinate cache lazily on the device of the first call.
    decoder = TransformerDecoder(
        layer=decoder_layer,
        num_layers=arch.decoder_layers,
        num_queries=arch.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=arch.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=None,
        stride=None,
        use_act_checkpoint=True,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=arch.d_model)


def build_dot_product_scoring(arch: Sam3Arch) -> nn.Module:
    from sam3.model.model_misc import MLP, DotProductScoring

    prompt_mlp = MLP(
        input_dim=arch.d_model,
        hidden_dim=arch.scoring_hidden,
        output_dim=arch.d_model,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(arch.d_model),
    )
    return DotProductScoring(d_model=arch.d_model, d_proj=arch.d_model, prompt_mlp=prompt_mlp)


def _geometry_encoder_class():
    from sam3.model.geometry_encoders import SequenceGeometryEncoder

    class GeometryEncoder(SequenceGeometryEncoder):
        """``SequenceGeometryEncoder`` that runs without a CUDA driver.

        sam3 0.1.4 pins a host tensor in ``_encode_boxes`` even when the prompt has no boxes, which
        raises on machines without a GPU driver. With no boxes every term of the box embedding is
        an empty (0, B, C) tensor, so returning one is exact.
        """

        def _encode_boxes(self, boxes, boxes_mask, boxes_labels, img_feats):
            if boxes.shape[0] == 0:
                return boxes.new_zeros(0, boxes.shape[1], self.d_model), boxes_mask
            return super()._encode_boxes(boxes, boxes_mask, boxes_labels, img_feats)

        def empty_prompt_token(self, img_feat, img_pos):
            """The output of ``forward`` for a prompt with no points, boxes or masks.

            Then every prompt embedding is empty and only the CLS token remains: projected and
            normed, refined by the layers against the image, normed again. Computing just that
            avoids zero-length tensors (cheaper, and traceable for ONNX export). The tests check
            it against sam3's full ``forward_grounding`` path.

            Args: img_feat, img_pos (P², B, C) seq-first. Returns (1, B, C) tokens, (B, 1) mask.
            """
            bs = img_feat.shape[1]
            token = self.cls_embed.weight.view(1, 1, self.d_model).expand(1, bs, -1)
            mask = torch.zeros(bs, 1, dtype=torch.bool, device=img_feat.device)
            token = self.norm(self.final_proj(token))
            for layer in self.encode:
                token = layer(tgt=token, memory=img_feat, tgt_key_padding_mask=mask, pos=img_pos)
            return self.encode_norm(token), mask

    return GeometryEncoder


def build_geometry_encoder(arch: Sam3Arch) -> nn.Module:
    from sam3.model.encoder import TransformerEncoderLayer

    layer = TransformerEncoderLayer(
        activation="relu",
        d_model=arch.d_model,
        dim_feedforward=arch.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=_mha(arch, batch_first=False),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=_mha(arch, batch_first=False),
    )
    return _geometry_encoder_class()(
        pos_enc=position_encoding(arch),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=arch.d_model,
        num_layers=arch.geometry_layers,
        layer=layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def build_sam3_image(
    arch: Sam3Arch,
    vision_backbone: nn.Module,
    text_encoder: Optional[nn.Module] = None,
    scalp: int = 1,
) -> nn.Module:
    """A ``sam3.model.sam3_image.Sam3Image`` around the given vision backbone.

    Args:
        arch: architecture numbers.
        vision_backbone: anything with the ``Sam3DualViTDetNeck.forward`` contract (ViT neck,
            pruned ViT neck, student backbone).
        text_encoder: a ``VETextEncoder``; built from ``arch`` when None.
        scalp: trailing FPN levels the vision backbone emits that SAM3 drops (1 for the ViT neck's
            0.5x level, 0 for students, which emit exactly the three levels).
    """
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.vl_combiner import SAM3VLBackbone

    text = text_encoder if text_encoder is not None else build_text_encoder(arch)
    backbone = SAM3VLBackbone(visual=vision_backbone, text=text, scalp=scalp)
    model = Sam3Image(
        backbone=backbone,
        transformer=build_transformer(arch),
        input_geometry_encoder=build_geometry_encoder(arch),
        segmentation_head=None,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=build_dot_product_scoring(arch),
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )
    return model.eval()
