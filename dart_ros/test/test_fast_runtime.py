"""The fast runtime: graph-capturable rebuilds equal sam3's eager computation (CPU), and on a GPU
the CUDA graphs, reduced precision and two-stream pipeline pass their gates."""

import numpy as np
import pytest
import torch

from conftest import make_detector, random_image
from dart_ros.coco import COCO_CLASSES
from dart_ros.model import encdec
from dart_ros.model.registry import build_model
from dart_ros.model.rope_attention import use_real_rope
from dart_ros.runtime.backbone import cosine
from dart_ros.runtime.encdec import GraphableEncDec


@pytest.mark.parametrize("mode", ["official", "text_only"])
@pytest.mark.parametrize("n", [1, 3, 17])
def test_graphable_encdec_equals_eager(tiny_detector, rng, mode, n):
    det = tiny_detector
    det.update(prompt_mode=mode)
    det.set_classes(list(COCO_CLASSES[20 : 20 + n]))
    feat = det.features(det.preprocess(random_image(rng))[0])
    want = det.encode_decode(feat)
    with torch.inference_mode():
        img_feat = encdec.flatten_features(feat)
        pos = det.model.position_encoding()
        v = det.vocabulary
        module = GraphableEncDec(det.model.sam3, det.model.feature_size)
        logits, boxes, presence = module(img_feat, pos, v.text, v.mask, geometry_token=mode == "official")
    det.update(prompt_mode="official")
    torch.testing.assert_close(logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, want.boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(presence, want.presence_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["official", "text_only"])
@pytest.mark.parametrize("n", [1, 3, 17])
def test_fused_encdec_equals_graphable(tiny_detector, rng, mode, n):
    """Shared first self-attention, cached text projections, native-dtype layers: same numbers (fp32)."""
    from dart_ros.runtime.fused_encdec import FusedEncDec

    det = tiny_detector
    det.set_classes(list(COCO_CLASSES[30 : 30 + n]))
    feat = det.features(det.preprocess(random_image(rng))[0])
    official = mode == "official"
    with torch.inference_mode():
        img_feat = encdec.flatten_features(feat)
        pos = det.model.position_encoding()
        v = det.vocabulary
        want = GraphableEncDec(det.model.sam3, det.model.feature_size)(img_feat, pos, v.text, v.mask, official)
        fused = FusedEncDec(det.model.sam3, det.model.feature_size, pos, torch.float32)
        cache = fused.prompt_cache(v.text, v.mask)
        assert len(cache) == n
        got = fused(img_feat, pos, cache, official)
        # Chunked through a padded static cache, as the graphs replay it.
        static = cache.empty_like(8)
        static.copy_rows_(cache, 0, min(n, 8))
        part = fused(img_feat, pos, static, official)
    for g, w, name in zip(got, want, ("logits", "boxes", "presence"), strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=0, msg=name)
    torch.testing.assert_close(part[0][: min(n, 8)], want[0][:8], atol=2e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("keys_with_pos", [True, False])
def test_single_query_geometry_token_equals_sam3_layers(batch, keys_with_pos):
    """Projecting the one query instead of the image's keys and values gives sam3's token (fp32)."""
    from dart_ros.runtime import geometry_token as single_query

    torch.manual_seed(0)
    encoder = build_model("tiny").sam3.geometry_encoder.eval()
    assert single_query.supports(encoder)
    for layer in encoder.encode:
        layer.pos_enc_at_cross_attn_keys = keys_with_pos
        for p in layer.parameters():  # the default init leaves in_proj biases at zero: make them count
            p.data.add_(0.1 * torch.randn_like(p))
    c = encoder.cls_embed.weight.shape[1]
    feat, pos = 2 * torch.randn(144, batch, c), torch.randn(144, batch, c)
    with torch.inference_mode():
        want, want_mask = encoder.empty_prompt_token(feat, pos)
        got, got_mask = single_query.geometry_token(encoder, feat, pos)
    assert got.shape == want.shape == (1, batch, c)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert torch.equal(got_mask, want_mask)
    if batch > 1:  # each image its own token
        assert not torch.allclose(got[:, 0], got[:, 1])


def test_single_query_geometry_token_refuses_other_layers():
    from dart_ros.runtime import geometry_token as single_query

    encoder = build_model("tiny").sam3.geometry_encoder
    assert single_query.supports(encoder)
    encoder.encode[0].pos_enc_at_attn = True  # queries with positions: not the one-token form
    assert not single_query.supports(encoder)
    encoder.encode[0].pos_enc_at_attn = False
    encoder.final_proj = None
    assert not single_query.supports(encoder)


def test_encode_decode_in_two_steps_equals_one_call(tiny_detector, rng):
    """The pipeline's form (encoder queued, decoder later) returns what encode_decode returns."""
    det = tiny_detector
    det.set_classes(["person", "car", "dog"])
    feat = det.features(det.preprocess(random_image(rng))[0])
    want = det.encode_decode(feat)
    runner = det.encdec_runner
    state = runner.encode(feat, det.vocabulary.prompt, geometry_token=True)
    got = runner.decode(state)
    torch.testing.assert_close(got.logits, want.logits, atol=0, rtol=0)
    torch.testing.assert_close(got.boxes, want.boxes, atol=0, rtol=0)
    assert runner.decode(state) is not None  # a finished state stays finished


def test_encoder_state_runs_its_pending_step_once():
    from dart_ros.model.encdec import EncDecOutput
    from dart_ros.runtime.interface import EncoderState

    calls = []
    part = EncDecOutput(torch.zeros(1, 2), torch.zeros(1, 2, 4), torch.zeros(1))
    state = EncoderState([part], lambda: calls.append(1) or part)
    out = state.finish()
    assert out.logits.shape == (2, 2) and calls == [1]
    state.finish()
    assert calls == [1]


def test_skipping_attention_weights_changes_nothing(rng):
    from dart_ros.runtime.encdec import skip_attention_weights

    det = make_detector(confidence_threshold=0.0)
    det.set_classes(["person", "car"])
    feat = det.features(det.preprocess(random_image(rng))[0])
    want = det.encode_decode(feat)
    assert skip_attention_weights(det.model.sam3.transformer) == 2 * det.model.arch.decoder_layers
    got = det.encode_decode(feat)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backbone", ["tiny", "tiny_pruned"])
def test_real_rope_equals_complex_rope(backbone):
    m = build_model(backbone)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want = m.forward_features(x)
        assert use_real_rope(m.vision.trunk) == len(m.arch.global_blocks) + sum(
            1 for i in range(m.arch.depth) if i not in m.arch.global_blocks and i not in m.preset.skip_blocks
        )
        got = m.forward_features(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not any("rope" in k or "freqs_cis" in k for k in m.state_dict())  # nothing derived is saved


@pytest.mark.parametrize("backbone,mask", [("tiny", None), ("tiny_pruned", None), ("tiny", "0:attn,2:mlp")])
@pytest.mark.parametrize("real_rope", [False, True])
def test_fast_vit_equals_sam3_trunk(backbone, mask, real_rope):
    """Window-major tokens, three-kernel RoPE and copy-free heads compute sam3's ViT exactly (fp32)."""
    from dart_ros.runtime.fast_vit import FastViTDetection

    m = build_model(backbone, mask_blocks=mask)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want = m.vision.forward_detection(x)
        if real_rope:
            use_real_rope(m.vision.trunk)
        fast = FastViTDetection(m.vision, m.feature_size)
        got = fast.forward_detection(x)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in m.vision.parameters())


def test_compiled_fast_vit_equals_sam3_trunk():
    """RoPE and the fused residual-add + LayerNorm compiled (CPU inductor) compute sam3's ViT (fp32)."""
    from dart_ros.runtime.compiled import CompiledOrEager
    from dart_ros.runtime.fast_vit import FastViTDetection

    m = build_model("tiny_pruned", mask_blocks="0:attn")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        want = m.vision.forward_detection(x)
        fast = FastViTDetection(m.vision, m.feature_size, compile_kernels=True)
        got = fast.forward_detection(x)
    fused = fast.fast_trunk.residual_layer_norm
    assert isinstance(fused, CompiledOrEager) and fused.compiled
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_fast_vit_gelu_epilogue_stays_within_bf16_resolution():
    """The GEMM-epilogue GELU (tanh form) differs from erf GELU far below bf16's resolution."""
    from dart_ros.runtime.fast_vit import FastViTDetection

    m = build_model("tiny")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        want = m.vision.forward_detection(x)
        got = FastViTDetection(m.vision, m.feature_size, gelu_epilogue=True).forward_detection(x)
    assert not torch.equal(got, want)  # the epilogue path really ran
    assert cosine(got, want) > 0.99999
    torch.testing.assert_close(got, want, atol=2e-3 * want.abs().max().item(), rtol=0)


def test_fast_vit_rejects_a_grid_the_windows_do_not_tile():
    from dart_ros.runtime.fast_vit import FastViTTrunk

    m = build_model("tiny", image_size=252)  # 18x18 tokens, 8x8 windows: sam3 pads, we do not
    with pytest.raises(ValueError, match="not a multiple of the window size"):
        FastViTTrunk(m.vision.trunk, m.feature_size)


@pytest.mark.parametrize("timm_name", ["repvit_m2_3", "tiny_vit_21m_224", "test_convnext"])
def test_fast_student_equals_the_student(timm_name):
    """Re-parameterised, channels-last copy == the student's detection level (fp32); the student is
    left as it was (still trainable, same module tree)."""
    from dart_ros.model.arch import TINY
    from dart_ros.model.student import StudentBackbone
    from dart_ros.runtime.backbone import prepare_backbone
    from dart_ros.runtime.fast_student import FastStudentDetection

    torch.manual_seed(0)
    student = StudentBackbone(timm_name, TINY, image_size=224).eval()
    for m in student.modules():  # non-trivial BatchNorm statistics: the conv-BN fusion must use them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.2)
            m.bias.data.normal_(0.0, 0.2)
    modules_before = [type(m) for m in student.modules()]
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        want = student.forward_detection(x)
        fast = prepare_backbone(student, None)
        got = fast.forward_detection(x)
    assert isinstance(fast, FastStudentDetection)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # NHWC features are already the encoder-decoder's token-major layout: no copy on the way.
    assert encdec.flatten_features(got).transpose(0, 1).is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    assert [type(m) for m in student.modules()] == modules_before
    if timm_name == "repvit_m2_3":
        assert sum(1 for _ in fast.modules()) < 0.7 * len(modules_before)


def test_submit_on_cpu_returns_each_frame_with_its_metadata(rng):
    det = make_detector(confidence_threshold=0.0)
    det.set_classes(["person"])
    frames = [random_image(rng, 100 + 10 * i, 120) for i in range(3)]
    got = []
    for i, f in enumerate(frames):
        got += det.submit(f, meta={"seq": i})
    got += det.flush()
    assert [g.meta["seq"] for g in got] == [0, 1, 2]
    for f, g in zip(frames, got, strict=True):
        np.testing.assert_allclose(g.scores, det.detect(f).scores, atol=1e-6)
        assert g.image_size == f.shape[:2]


def test_fast_runtime_requires_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_detector(runtime="fast")


# ----------------------------------------------------------------------------------------- GPU


def test_compiled_fused_encdec_equals_eager(tiny_detector, rng):
    """torch.compile of the encoder and decoder loops (CPU inductor here, Triton on CUDA) changes
    only how the element-wise work is fused, not the numbers. (One shape: each is a compile.)"""
    from dart_ros.runtime.fused_encdec import FusedEncDec

    det = tiny_detector
    det.set_classes(list(COCO_CLASSES[40:45]))
    feat = det.features(det.preprocess(random_image(rng))[0])
    with torch.inference_mode():
        img_feat = encdec.flatten_features(feat)
        pos = det.model.position_encoding()
        v = det.vocabulary
        eager = FusedEncDec(det.model.sam3, det.model.feature_size, pos, torch.float32)
        compiled = FusedEncDec(det.model.sam3, det.model.feature_size, pos, torch.float32, compile_stages=True)
        cache = eager.prompt_cache(v.text, v.mask)
        want = eager(img_feat, pos, cache, True)
        got = compiled(img_feat, pos, cache, True)
    for g, w, name in zip(got, want, ("logits", "boxes", "presence"), strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0, msg=name)
    assert not compiled.run_encoder.failed and not compiled.run_decoder.failed and not compiled.run_geometry.failed


def test_disable_compiled_switches_every_compiled_part_to_eager():
    """The graph runners' fallback: after a failed capture, every compiled part runs eagerly."""
    from dart_ros.model.arch import TINY
    from dart_ros.model.student import StudentBackbone
    from dart_ros.runtime.compiled import CompiledOrEager, disable_compiled
    from dart_ros.runtime.fast_student import FastStudentDetection

    fast = FastStudentDetection(StudentBackbone("test_convnext", TINY, image_size=112).eval(), compile_kernels=True)
    assert isinstance(fast.run, CompiledOrEager) and not fast.run.failed
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        assert disable_compiled(fast)
        assert fast.run.failed and not fast.run.compiled  # never compiled: eager from now on
        assert not disable_compiled(fast)  # nothing left to switch
        torch.testing.assert_close(fast.forward_detection(x), fast.forward_eager(x))


def test_failed_capture_is_retried_once_without_compiled_code():
    from dart_ros.model.arch import TINY
    from dart_ros.model.student import StudentBackbone
    from dart_ros.runtime.compiled import capture_with_eager_fallback
    from dart_ros.runtime.fast_student import FastStudentDetection

    fast = FastStudentDetection(StudentBackbone("test_convnext", TINY, image_size=112).eval(), compile_kernels=True)
    calls, pools = [], []

    def capture():  # fails while the compiled path is in use, as a broken capture would
        calls.append(fast.run.failed)
        if not fast.run.failed:
            raise RuntimeError("operation not permitted when stream is capturing")
        return "graph"

    assert capture_with_eager_fallback(fast, "student", capture, lambda: pools.append(1)) == "graph"
    assert calls == [False, True] and pools == [1]
    # Nothing compiled left to switch off: the error is the caller's.
    with pytest.raises(RuntimeError, match="boom"):
        capture_with_eager_fallback(fast, "student", lambda: (_ for _ in ()).throw(RuntimeError("boom")), lambda: None)


def match_detections(a, b, iou_min=0.99):
    """Greedy same-class matching by IoU; returns matched (i, j, iou) pairs."""
    from torchvision.ops import box_iou

    if not len(a) or not len(b):
        return []
    iou = box_iou(torch.as_tensor(a.boxes), torch.as_tensor(b.boxes)).numpy()
    iou[a.class_ids[:, None] != b.class_ids[None, :]] = 0
    pairs, used = [], set()
    for i in np.argsort(-a.scores):
        j = int(np.argmax(np.where([k in used for k in range(len(b))], -1, iou[i])))
        if iou[i, j] >= iou_min:
            used.add(j)
            pairs.append((i, j, iou[i, j]))
    return pairs


@pytest.mark.gpu
@pytest.mark.parametrize("backbone", ["vit_h", "repvit_m2_3"])
def test_fast_path_precision_gates(backbone, rng):
    """bf16 fast path vs fp32 eager reference on the same random weights and images: features
    cosine >= 0.999; every detection clearly above the threshold on either side has a same-class
    partner with IoU >= 0.99 and a score within 0.02. NMS and top-k are off: their discrete
    decisions would turn a 1e-3 score change into a different set."""
    thr, margin = 0.3, 0.02
    kw = dict(device="cuda", confidence_threshold=thr, nms_iou=1.0, max_detections=0)
    ref = make_detector(backbone, runtime="eager", precision="fp32", **kw)
    fast = make_detector(backbone, runtime="fast", precision="bf16", **kw)
    names = list(COCO_CLASSES[:4])
    ref.set_classes(names)
    fast.set_classes(names)
    for _ in range(3):
        img = random_image(rng, 720, 1280)
        px = ref.preprocess(img)[0]
        assert cosine(ref.features(px), fast.features(px)) >= 0.999
        a, b = ref.detect(img), fast.detect(img)
        for x, y in ((a, b), (b, a)):
            pairs = {i: (j, iou) for i, j, iou in match_detections(x, y)}
            for i in np.flatnonzero(x.scores >= thr + margin):
                assert i in pairs, f"detection {i} (score {x.scores[i]:.3f}) has no partner"
                assert abs(x.scores[i] - y.scores[pairs[i][0]]) <= margin


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_launches(rng):
    """Same fast-runtime code with and without graphs, fp32: graphs change nothing numerically."""
    a = make_detector(
        "vit_h", device="cuda", runtime="fast", precision="fp32", cuda_graphs=False, confidence_threshold=0.0
    )
    b = make_detector(
        "vit_h", device="cuda", runtime="fast", precision="fp32", cuda_graphs=True, confidence_threshold=0.0
    )
    for n in (1, 3, 17):
        names = list(COCO_CLASSES[:n])
        a.set_classes(names)
        b.set_classes(names)
        px = a.preprocess(random_image(rng, 480, 640))[0]
        fa, fb = a.features(px), b.features(px)
        torch.testing.assert_close(fb, fa, atol=1e-4, rtol=1e-4)
        ra, rb = a.encode_decode(fa), b.encode_decode(fa)
        torch.testing.assert_close(rb.logits, ra.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(rb.boxes, ra.boxes, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_warm_up_captures_every_graph_before_the_first_frame(rng):
    det = make_detector("repvit_m2_3", device="cuda", precision="bf16", max_classes_per_chunk=8)
    assert det.warm_up() > 0
    assert sorted(k[0] for k in det.encdec_runner.captured) == [1, 2, 4, 8]
    assert all(det.backbone_runner.captured)
    before = det.encdec_runner.captured
    for n in (3, 8, 11):
        det.set_classes(list(COCO_CLASSES[:n]))
        det.detect(random_image(rng, 480, 640))
    assert det.encdec_runner.captured == before  # nothing captured on the way


@pytest.mark.gpu
@pytest.mark.parametrize("backbone", ["vit_h", "repvit_m2_3"])
def test_batched_backbone_pass_equals_one_image_at_a_time(rng, backbone):
    """Several cameras' frames in one batched backbone graph give each frame's own detections."""
    det = make_detector(backbone, device="cuda", precision="bf16", confidence_threshold=0.2)
    det.warm_up(batch_sizes=(2, 3))
    assert sorted(det.backbone_runner.graphs.batch_graphs) == [2, 3]
    det.set_classes(list(COCO_CLASSES[:4]))
    frames = [random_image(rng, 480, 640), random_image(rng, 720, 1280), random_image(rng, 600, 600)]
    want = [det.detect(f) for f in frames]
    px = torch.cat([det.preprocess(f)[0] for f in frames])
    batched = det.features(px)
    for i, f in enumerate(frames):
        assert cosine(batched[i : i + 1], det.features(det.preprocess(f)[0])) > 0.999
    got = det.detect_batch(frames)
    assert sorted(det.backbone_runner.graphs.batch_graphs) == [2, 3]  # nothing captured on the way
    for w, g in zip(want, got, strict=True):
        assert g.image_size == w.image_size
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        np.testing.assert_allclose(g.scores, w.scores, atol=2e-3)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1.0)


@pytest.mark.gpu
def test_pipeline_returns_the_sequential_results_in_order(rng):
    det = make_detector("vit_h", device="cuda", precision="bf16", confidence_threshold=0.2)
    det.set_classes(list(COCO_CLASSES[:4]))
    frames = [random_image(rng, 480 + 16 * i, 640) for i in range(6)]
    want = [det.detect(f) for f in frames]
    got = []
    for i, f in enumerate(frames):
        got += det.submit(f, meta=("stamp", i))
    got += det.flush()
    assert [g.meta for g in got] == [("stamp", i) for i in range(6)]

    def same(w, g):
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-3)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=0.5)

    for w, g in zip(want, got, strict=True):
        same(w, g)
        assert g.timings_ms["encdec"] > 0 and g.timings_ms["backbone"] > 0
    # detect() between submits replays the graphs that hold the in-flight frame's encoder state
    # and the backbone slots: neither result may change
    got = det.submit(frames[0], meta=0)
    for i in (1, 2):
        same(want[3 + i], det.detect(frames[3 + i]))
        got += det.submit(frames[i], meta=i)
    got += det.flush()
    assert [g.meta for g in got] == [0, 1, 2]
    for w, g in zip(want[:3], got, strict=True):
        same(w, g)


@pytest.mark.gpu
def test_host_and_gpu_postprocessing_agree(rng):
    """Post-processing runs on the CPU below host_nms_max_candidates candidates, on the GPU above:
    both give the same detections (same order too: ties are broken by candidate index)."""
    from dart_ros.postprocess import to_detections

    det = make_detector("tiny", device="cuda", precision="bf16", confidence_threshold=0.05, nms_iou=0.5)
    det.set_classes(list(COCO_CLASSES[:6]))
    img = random_image(rng, 480, 640)
    pixels, info = det.preprocess(img)
    raw = det.encode_decode(det.features(pixels))
    results = []
    for limit in (0, 10**9):  # everything on the GPU, everything on the CPU
        results.append(to_detections(raw, info, det.classes, det.config.postprocess_params(), limit))
    gpu, host = results
    assert len(gpu.scores) > 10  # NMS had work to do
    np.testing.assert_array_equal(host.class_ids, gpu.class_ids)
    np.testing.assert_allclose(host.scores, gpu.scores, atol=1e-6)
    np.testing.assert_allclose(host.boxes, gpu.boxes, atol=1e-3)


def test_gemm_tuner_is_torch_off_the_gpu():
    from dart_ros.runtime.blaslt import GemmTuner

    tuner = GemmTuner()
    x, w, b = torch.randn(6, 8), torch.randn(5, 8), torch.randn(5)
    torch.testing.assert_close(tuner.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    assert not tuner.plans  # nothing to plan for CPU tensors


@pytest.mark.gpu
def test_tuned_gemms_in_a_cuda_graph_equal_torch():
    """The ViT-H block shapes on the timed cuBLASLt algorithms, replayed from a graph, against
    torch's GEMMs (bf16: equal up to a different summation order)."""
    from dart_ros.runtime import blaslt

    if not blaslt.available():
        pytest.skip("nvmath-python not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(5184, 1024, device="cuda", dtype=torch.bfloat16, generator=g)
    cases = [
        (
            torch.randn(n, 1024, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03,
            torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g),
            gelu,
        )
        for n, gelu in ((4736, True), (3072, False), (1024, False))
    ]
    tuner = blaslt.GemmTuner(candidates=8, iterations=3)
    want = [tuner.linear(x, w, b, gelu) for w, b, gelu in cases]  # eager: plans, returns torch's result
    assert len(tuner.plans) == 3 and all(p is not None for p in tuner.plans.values())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        got = [tuner.linear(x, w, b, gelu) for w, b, gelu in cases]
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_tuned_gemms_run_inside_the_backbone_graph(rng):
    from dart_ros.runtime import blaslt

    if not blaslt.available():
        pytest.skip("nvmath-python not installed")
    plain = make_detector("vit_h", device="cuda", runtime="fast", precision="bf16", tune_gemms=False)
    tuned = make_detector("vit_h", device="cuda", runtime="fast", precision="bf16", tune_gemms=True)
    assert plain.backbone_runner.module.fast_trunk.gemms is None
    px = plain.preprocess(random_image(rng, 480, 640))[0]
    a, b = plain.features(px), tuned.features(px)
    plans = tuned.backbone_runner.module.fast_trunk.gemms.plans
    assert len(plans) == 4 and all(p is not None for p in plans.values())  # qkv, proj, fc1 + GELU, fc2
    assert cosine(a, b) >= 0.9999


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["eager", "fast"])
def test_every_runtime_streams_through_the_pipeline(rng, runtime):
    """The pipeline drives any runner pair: on CUDA the eager runtime streams too, with its
    sequential results."""
    det = make_detector(
        "tiny",
        device="cuda",
        runtime=runtime,
        precision="bf16",
        confidence_threshold=0.1,
        classes=list(COCO_CLASSES[:3]),
    )
    frames = [random_image(rng, 240 + 8 * i, 320) for i in range(4)]
    want = [det.detect(f) for f in frames]
    got = [r for i, f in enumerate(frames) for r in det.submit(f, meta=i)] + det.flush()
    assert [g.meta for g in got] == [0, 1, 2, 3]
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g.class_ids, w.class_ids)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-3)
