"""The encoder-decoder pass rebuilt for CUDA-graph capture and bucketed graphs.

:class:`GraphableEncDec` computes exactly what :func:`dart_ros.model.encdec.encode_decode` does
(same sam3 layers, same order), but loops over the encoder and decoder layers itself so that no
per-call constant is built on the host: sam3's encoder builds ``spatial_shapes`` with
``torch.tensor`` from a Python list (a host-to-device copy) and its decoder indexes that tensor to
size the boxRPB bias (a device-to-host sync). Neither can be captured in a CUDA graph.

:class:`EncDecGraphs` captures it once per class-count bucket (1, 2, 4, 8, 16) and prompt length,
with static input and output buffers (the fast runtime captures
:class:`dart_ros.runtime.fused_encdec.FusedEncDec` with it; GraphableEncDec is the plain-layer
version, kept as the ONNX export's module and as the fused module's reference).
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from dart_ros.model.encdec import EncDecOutput
from dart_ros.model.encdec import geometry_token as encdec_geometry_token
from dart_ros.runtime.compiled import capture_with_eager_fallback
from dart_ros.runtime.interface import EncoderState


class _NoWeightsMHA(nn.MultiheadAttention):
    """nn.MultiheadAttention that never returns attention weights.

    sam3's decoder calls plain ``nn.MultiheadAttention`` with the default ``need_weights=True``,
    which forces the unfused math path and averages weights nobody reads. The outputs are the same.
    """

    def forward(self, *args, **kwargs):
        kwargs["need_weights"] = False
        return super().forward(*args, **kwargs)


def skip_attention_weights(module: nn.Module) -> int:
    """Per instance: make every plain ``nn.MultiheadAttention`` under ``module`` skip its weights."""
    count = 0
    for m in module.modules():
        if type(m) is nn.MultiheadAttention:
            m.__class__ = _NoWeightsMHA  # same parameters and state; only forward's default changes
            count += 1
    return count


class GraphableEncDec(nn.Module):
    """N prompts over one image's features, graph-capturable. Holds no parameters of its own."""

    def __init__(self, sam3: nn.Module, feature_size: int):
        super().__init__()
        self.sam3 = sam3
        self.p = feature_size

    def forward(
        self,
        img_feat: torch.Tensor,
        img_pos: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        geometry_token: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: img_feat, img_pos (P², 1, C) seq-first; text (T, N, C); text_mask (N, T) bool
        (True = padding); geometry_token: append the image-conditioned geometry CLS token, computed
        once and shared by the N prompts (official prompt mode).
        Returns: logits (N, Q), boxes (N, Q, 4) cxcywh, presence logits (N,)."""
        from sam3.model.model_misc import gen_sineembed_for_position, inverse_sigmoid

        n = text.shape[1]
        prompt, prompt_mask = text, text_mask
        if geometry_token:
            geo, geo_mask = encdec_geometry_token(self.sam3, img_feat, img_pos.to(img_feat.dtype), (self.p, self.p))
            prompt = torch.cat([text.to(geo.dtype), geo.expand(-1, n, -1)], dim=0)
            prompt_mask = torch.cat([text_mask, geo_mask.expand(n, -1)], dim=1)
        encoder = self.sam3.transformer.encoder
        decoder = self.sam3.transformer.decoder
        # Encoder: batch-first inside, as TransformerEncoder._prepare_multilevel_features leaves it.
        pos_bf = img_pos.transpose(0, 1).expand(n, -1, -1)
        out = img_feat.transpose(0, 1).expand(n, -1, -1)
        prompt_bf = prompt.transpose(0, 1)
        for layer in encoder.layers:
            out = layer(
                tgt=out,
                memory=prompt_bf,
                memory_key_padding_mask=prompt_mask,
                query_pos=pos_bf,
                tgt_key_padding_mask=None,
            )
        memory = out.transpose(0, 1)
        pos = pos_bf.transpose(0, 1)

        # Decoder: TransformerDecoder.forward with apply_dac=False and one feature level.
        output = decoder.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
        ref = decoder.reference_points.weight.unsqueeze(1).repeat(1, n, 1).sigmoid()
        presence = decoder.presence_token.weight[None].expand(1, n, -1)
        normed = output
        for layer in decoder.layers:
            sine = gen_sineembed_for_position(ref, decoder.d_model)
            query_pos = decoder.ref_point_head(sine)
            bias = decoder._get_rpb_matrix(ref, (self.p, self.p)).flatten(0, 1)
            output, presence = layer(
                tgt=output,
                tgt_query_pos=query_pos,
                tgt_query_sine_embed=sine,
                tgt_key_padding_mask=None,
                tgt_reference_points=ref[:, :, None],
                memory_text=prompt,
                text_attention_mask=prompt_mask,
                memory=memory,
                memory_key_padding_mask=None,
                memory_level_start_index=None,
                memory_spatial_shapes=None,
                memory_pos=pos,
                self_attn_mask=None,
                cross_attn_mask=bias,
                dac=False,
                dac_use_selfatt_ln=decoder.dac_use_selfatt_ln,
                presence_token=presence,
            )
            normed = decoder.norm(output)
            # Box refinement; after the last layer this is the final box (sam3 recomputes it the same way).
            ref = (inverse_sigmoid(ref) + decoder.bbox_embed(normed)).sigmoid()
        presence_logits = decoder.presence_token_head(decoder.presence_token_out_norm(presence)).squeeze(-1)
        hs = normed.transpose(0, 1)[None]  # (1, N, Q, C)
        logits = self.sam3.dot_prod_scoring(hs, prompt, prompt_mask)[0, :, :, 0]
        return logits, ref.transpose(0, 1), presence_logits[0]


class EncDecGraphs:
    """Bucketed CUDA graphs of an encoder-decoder module with static buffers.

    ``module(img_feat, img_pos, prompt, geometry_token)`` takes a per-vocabulary prompt object with
    the interface of :class:`dart_ros.runtime.fused_encdec.PromptCache` (class axis first:
    ``len``, ``empty_like(n)``, ``copy_rows_(src, start, count)``, ``mask`` (N, T)). Graphs are
    captured per class-count bucket, prompt length and prompt mode; a vocabulary of N classes runs
    as ⌈N/max bucket⌉ replays, the last chunk padded up to its bucket with a valid prompt.
    A module with ``encode(...) -> state`` and ``decode(*state)`` halves is captured as two graphs,
    replayed by :meth:`encode` and the pending step of the state it returns, so that a caller can
    queue other work between them.
    Replays run on the current stream and never synchronise the host. The
    returned tensors are fresh (cloned on the stream), so callers may keep them across replays.
    """

    def __init__(self, module: nn.Module, buckets: Sequence[int] = (1, 2, 4, 8, 16)):
        self.module = module
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.pool = torch.cuda.graph_pool_handle()
        # Own capture stream, hence own cuBLAS workspace (see BackboneGraphs.capture_stream).
        self.capture_stream = torch.cuda.Stream()
        self._graphs: Dict[Tuple[int, int, bool], tuple] = {}
        self._img: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._in_flight: Optional[EncoderState] = None

    @property
    def max_bucket(self) -> int:
        return self.buckets[-1]

    def _static_image(self, img_feat, img_pos):
        if self._img is None or self._img[0].shape != img_feat.shape or self._img[0].dtype != img_feat.dtype:
            if self._graphs:
                raise RuntimeError("image feature shape/dtype changed after graph capture")
            # Contiguous whatever the first caller's layout: a graph's kernels are fixed at capture.
            self._img = (
                torch.empty(img_feat.shape, dtype=img_feat.dtype, device=img_feat.device),
                torch.empty(img_pos.shape, dtype=img_pos.dtype, device=img_pos.device),
            )
        return self._img

    def _capture(self, key, bucket: int, prompt, geometry: bool):
        def fresh_pool():
            self.pool = torch.cuda.graph_pool_handle()

        return capture_with_eager_fallback(
            self.module, "encoder-decoder", lambda: self._capture_once(key, bucket, prompt, geometry), fresh_pool
        )

    def _capture_once(self, key, bucket: int, prompt, geometry: bool):
        feat, pos = self._img
        static = prompt.empty_like(bucket)
        side = self.capture_stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazily built caches, cuBLAS handles, autotuning
                self.module(feat, pos, static, geometry)
        torch.cuda.current_stream().wait_stream(side)
        graphs = []
        if hasattr(self.module, "encode") and hasattr(self.module, "decode"):
            # Two graphs in one pool, captured in replay order; the state between them stays
            # referenced (by the entry), so the decoder's graph never reuses its memory.
            g_enc, g_dec = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(g_enc, pool=self.pool, stream=side):
                state = self.module.encode(feat, pos, static, geometry)
            with torch.cuda.graph(g_dec, pool=self.pool, stream=side):
                outputs = self.module.decode(*state)
            graphs, keep = [g_enc, g_dec], state
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                outputs = self.module(feat, pos, static, geometry)
            graphs, keep = [graph], None
        entry = (graphs, static, outputs, keep)
        self._graphs[key] = entry
        return entry

    def __call__(
        self, img_feat: torch.Tensor, img_pos: torch.Tensor, prompt, geometry_token: bool = False
    ) -> EncDecOutput:
        return self.encode(img_feat, img_pos, prompt, geometry_token).finish()

    @property
    def captured(self) -> Tuple[Tuple[int, int, bool], ...]:
        """(bucket, prompt length, geometry token) of every captured graph set."""
        return tuple(sorted(self._graphs))

    def encode(
        self, img_feat: torch.Tensor, img_pos: torch.Tensor, prompt, geometry_token: bool = False
    ) -> EncoderState:
        """Queue every chunk up to the last chunk's encoder; the state's pending step queues that
        chunk's decoder. The graphs hold the encoder's output until then: a second ``encode``
        before the first state is finished first queues that decoder (on the current stream; the
        first state keeps its outputs) rather than overwrite what it needs."""
        if self._in_flight is not None and self._in_flight.pending is not None:
            self._in_flight.done.append(self._in_flight.pending())
            self._in_flight.pending = None
        feat, pos = self._static_image(img_feat, img_pos)
        feat.copy_(img_feat)
        pos.copy_(img_pos)
        n, t = len(prompt), prompt.mask.shape[1]
        state = EncoderState([])
        for start in range(0, n, self.max_bucket):
            chunk = min(self.max_bucket, n - start)
            bucket = next(b for b in self.buckets if b >= chunk)
            key = (bucket, t, geometry_token)
            graphs, static, outputs, _ = self._graphs.get(key) or self._capture(key, bucket, prompt, geometry_token)
            static.copy_rows_(prompt, start, chunk)
            graphs[0].replay()  # the encoder's graph (or the whole pass)
            rest = functools.partial(self._finish_chunk, graphs[1:], outputs, chunk)
            if start + chunk < n:
                state.done.append(rest())
            else:
                state.pending = rest
        self._in_flight = state
        return state

    @staticmethod
    def _finish_chunk(graphs, outputs, chunk: int) -> EncDecOutput:
        for g in graphs:
            g.replay()
        logits, boxes, presence = outputs
        return EncDecOutput(logits[:chunk].clone(), boxes[:chunk].clone(), presence[:chunk].clone())
