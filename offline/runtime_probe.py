"""Probes behind the fast runtime's design decisions (CUDA; random ViT-H weights; prints and writes JSON).

    python offline/runtime_probe.py compile --mode auto --out artifacts/probe
    python offline/runtime_probe.py overlap --classes 1 4 --out artifacts/probe
    python offline/runtime_probe.py backbone --out artifacts/probe
    python offline/runtime_probe.py attention --classes 1 4 16 80 --out artifacts/probe
    python offline/runtime_probe.py gaps --classes 1 4 --compile-encdec --out artifacts/probe
    python offline/runtime_probe.py gemms --out artifacts/probe

compile   enc-dec graph replay time at 1/4/16/80 classes and the start-up cost of capturing every
          bucket in both prompt modes, with the encoder/decoder loops eager (``off``) or compiled
          with static (``static``: one specialisation per bucket) or automatic dynamic shapes
          (``auto``, what ``compile_encdec`` uses). One mode per process: dynamo's caches are global.
overlap   does the two-stream pipeline overlap the stages? Sequential and pipelined frame times
          (numpy and GPU-resident frames; the enc-dec stream at high and at equal priority) next
          to the stage graphs alone, sequential and replayed on two streams with only events
          between them. If the latter is close to the sum of the stages, the GPU is saturated and
          pipelining can only hide host time.
backbone  the ViT-H backbone graph with its attention on SDPA (cuDNN) and on our Triton kernel
          (windows of 576 tokens and the global blocks, 16 heads of 64), same process; and the
          cosine between the two feature maps.
attention the encoder self-attention alone (N classes × 5,184 tokens, 8 heads of 32; q and k as
          halves of one GEMM output, as the enc-dec calls it): SDPA (cuDNN) against every block
          configuration of the Triton kernel (``dart_ros.runtime.attention``) and the autotuned
          pick; kernel time by CUDA events, TFLOP/s,
          max error against fp32; the cross-attention to a padded text prompt and the decoder's
          biased cross-attention (SDPA vs kernel; host launch cost included at small sizes);
          then the whole enc-dec graph with the kernels off and on.
gaps      how much of each graph replay the GPU spends between kernels: the backbone graph and the
          enc-dec graphs replayed back to back under the profiler; per replay the kernel count,
          the summed and the merged (busy) kernel time, and the idle rest. Idle time that grows
          with the kernel count is launch latency, which fewer, larger kernels remove.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict

import numpy as np
import torch

from dart_ros.coco import COCO_CLASSES
from dart_ros.config import DetectorConfig
from dart_ros.detector import Detector
from dart_ros.runtime.timing import cuda_events_ms, cuda_kernels, cuda_median_ms


def frames(count: int = 4):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8) for _ in range(count)]


def probe_compile(mode: str) -> Dict[str, object]:
    import dart_ros.runtime.fused_encdec as fused

    if mode == "static":  # the alternative compile_encdec does not use, for comparison
        auto = fused.maybe_compiled
        fused.maybe_compiled = lambda fn, name, enabled, **o: auto(fn, name, enabled, dynamic=False)
    t0 = time.perf_counter()
    det = Detector(DetectorConfig(backbone="vit_h", device="cuda", precision="bf16", runtime="fast",
                                  compile_encdec=mode != "off"))
    feat = det.features(det.preprocess(frames(1)[0])[0])
    row: Dict[str, object] = {"mode": mode, "build_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    for n in (1, 2, 4, 8, 16):  # every bucket in both prompt modes: the worst-case start-up
        det.set_classes(list(COCO_CLASSES[:n]))
        for prompt_mode in ("official", "text_only"):
            det.update(prompt_mode=prompt_mode)
            det.encode_decode(feat)
    det.update(prompt_mode="official")
    torch.cuda.synchronize()
    row["all_buckets_first_s"] = time.perf_counter() - t0
    for n in (1, 4, 16, 80):
        det.set_classes(list(COCO_CLASSES[:n]))
        row[f"encdec_ms@{n}"] = cuda_median_ms(lambda: det.encode_decode(feat))
    m = det._ed_module
    row["compile_failed"] = [getattr(f, "failed", None) for f in (m.run_encoder, m.run_decoder)]
    return row


def _pipelined_ms(det, frames_, k: int = 60) -> float:
    for f in frames_:
        det.submit(f)
    det.flush()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(k):
        det.submit(frames_[i % len(frames_)])
    det.flush()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / k


def probe_overlap(classes, compile_encdec: bool = False) -> Dict[str, object]:
    from dart_ros.runtime.pipeline import ENCDEC_PRIORITY, StreamPipeline

    det = Detector(DetectorConfig(backbone="vit_h", device="cuda", precision="bf16", runtime="fast",
                                  compile_encdec=compile_encdec))
    det.warm_up()
    host = frames()
    gpu = [torch.from_numpy(f).cuda() for f in host]
    px = det.preprocess(host[0])[0]
    out: Dict[str, object] = {}
    for n in classes:
        det.set_classes(list(COCO_CLASSES[:n]))
        vocab = det.vocabulary
        row = {"sequential_ms": cuda_median_ms(lambda: det.detect(host[0])),
               "sequential_gpu_frame_ms": cuda_median_ms(lambda: det.detect(gpu[0]))}
        for priority in (ENCDEC_PRIORITY, 0):
            det._pipeline = StreamPipeline(det, encdec_priority=priority)
            tag = "" if priority == ENCDEC_PRIORITY else "_equal_priority"
            for name, fr in (("numpy", host), ("gpu", gpu)):
                row[f"pipelined_{name}{tag}_ms"] = _pipelined_ms(det, fr)
        det._pipeline = None
        feat = det._bb.run(px, 0).clone()
        row["backbone_ms"] = cuda_median_ms(lambda: det._bb.run(px, 0))
        row["encdec_ms"] = cuda_median_ms(lambda: det.encode_decode(feat, vocab))
        row["stages_sequential_ms"] = cuda_median_ms(lambda: det.encode_decode(det._bb.run(px, 0), vocab))
        for tag, priority in (("", 0), ("_priority", ENCDEC_PRIORITY)):
            a, b = torch.cuda.Stream(), torch.cuda.Stream(priority=priority)
            k = 20
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(k):  # timing only: slot reuse is not guarded here
                with torch.cuda.stream(a):
                    det._bb.graphs[i % 2].replay()
                    done = torch.cuda.Event()
                    done.record()
                with torch.cuda.stream(b):
                    b.wait_event(done)
                    det.encode_decode(det._bb.outputs[i % 2], vocab)
            torch.cuda.synchronize()
            row[f"stages_two_streams{tag}_ms"] = (time.perf_counter() - t0) * 1e3 / k
        out[f"classes={n}"] = row
        print(n, json.dumps(row), flush=True)
    return out


def probe_backbone() -> Dict[str, object]:
    from dart_ros.runtime import attention as att
    from dart_ros.runtime.backbone import cosine

    out: Dict[str, object] = {}
    feats = {}
    for name, enabled in (("sdpa", False), ("kernel", True)):
        with att.use_kernels(enabled):  # graphs captured inside keep the choice
            det = Detector(DetectorConfig(backbone="vit_h", device="cuda", precision="bf16", runtime="fast"))
            px = det.preprocess(frames(1)[0])[0]
            feats[name] = det._bb.run(px, 0).clone()
            out[f"backbone_ms_{name}"] = cuda_median_ms(lambda: det._bb.run(px, 0))
        print(name, round(out[f"backbone_ms_{name}"], 3), flush=True)
        del det
    out["feature_cosine"] = cosine(feats["sdpa"], feats["kernel"])
    return out


def probe_attention(classes) -> Dict[str, object]:
    import triton

    from dart_ros.runtime import attention as att

    tokens, heads, d = 5184, 8, 32
    c = heads * d
    out: Dict[str, object] = {}
    for n in classes:
        g = torch.Generator(device="cuda").manual_seed(n)
        qk = torch.randn(n, tokens, 2 * c, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(n, tokens, c, device="cuda", dtype=torch.bfloat16, generator=g)
        q, k = qk[..., :c], qk[..., c:]
        m = min(n, 2)  # the fp32 reference on the first classes only (memory)
        ref = att.attention(q[:m].float(), k[:m].float(), v[:m].float(), heads)
        flop = 4 * n * heads * tokens * tokens * d

        def row(fn):
            ms = cuda_events_ms(fn)
            err = (fn()[:m].float() - ref).abs().max().item()
            return {"ms": round(ms, 4), "tflops": round(flop / ms / 1e9, 1), "max_err": err}

        with att.use_kernels(False):
            res = {"sdpa": row(lambda: att.attention(q, k, v, heads))}
        for cfg in att._configs():
            name = "bm{BLOCK_M}_bn{BLOCK_N}".format(**cfg.kwargs) + f"_w{cfg.num_warps}_s{cfg.num_stages}"
            try:
                res[name] = row(lambda: att.launch(q, k, v, heads, config=cfg))
            except (triton.runtime.errors.OutOfResources, RuntimeError) as e:
                res[name] = {"error": str(e)[:120]}
        res["autotuned"] = row(lambda: att.attention(q, k, v, heads))
        res["autotuned_config"] = str(att._tuned_kernel.best_config)
        # the encoder's cross-attention to a padded 33-token text prompt (key-padding mask)
        kt, vt = (torch.randn(n, 33, c, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        mask = torch.ones(n, 1, 1, 33, device="cuda", dtype=torch.bool)
        mask[..., 20:] = False
        with att.use_kernels(False):
            res["text_cross_sdpa_ms"] = round(cuda_events_ms(lambda: att.attention(q, kt, vt, heads, mask)), 4)
        res["text_cross_kernel_ms"] = round(cuda_events_ms(lambda: att.attention(q, kt, vt, heads, mask)), 4)
        # the decoder's boxRPB cross-attention: 201 queries over the tokens with an additive bias
        qd = torch.randn(n, 201, c, device="cuda", dtype=torch.bfloat16, generator=g)
        bias = torch.randn(n, heads, 201, tokens, device="cuda", dtype=torch.bfloat16, generator=g)
        with att.use_kernels(False):
            res["decoder_biased_sdpa_ms"] = round(cuda_events_ms(lambda: att.attention(qd, k, v, heads, bias)), 4)
        res["decoder_biased_kernel_ms"] = round(cuda_events_ms(lambda: att.attention(qd, k, v, heads, bias)), 4)
        del bias
        out[f"classes={n}"] = res
        best = min((r["ms"], k_) for k_, r in res.items() if isinstance(r, dict) and "ms" in r)
        print(f"{n} classes: sdpa {res['sdpa']['ms']:.3f} ms ({res['sdpa']['tflops']} TFLOP/s), "
              f"best {best[1]} {best[0]:.3f} ms, autotuned {res['autotuned']['ms']:.3f} ms "
              f"({res['autotuned']['tflops']} TFLOP/s, err {res['autotuned']['max_err']:.2e} vs sdpa "
              f"{res['sdpa']['max_err']:.2e}); text cross-attention: SDPA {res['text_cross_sdpa_ms']:.3f} ms, "
              f"kernel {res['text_cross_kernel_ms']:.3f} ms; decoder biased cross-attention: SDPA "
              f"{res['decoder_biased_sdpa_ms']:.3f} ms, kernel {res['decoder_biased_kernel_ms']:.3f} ms", flush=True)
        del qk, v, ref
    for name, enabled in (("sdpa", False), ("kernel", True)):  # the whole enc-dec graph, kernels off then on
        with att.use_kernels(enabled):
            det = Detector(DetectorConfig(backbone="vit_h", device="cuda", precision="bf16", runtime="fast"))
            feat = det.features(det.preprocess(frames(1)[0])[0])
            for n in classes:
                det.set_classes(list(COCO_CLASSES[:n]))
                out.setdefault(f"encdec_ms@{n}", {})[name] = cuda_median_ms(lambda: det.encode_decode(feat))
        print("enc-dec", name, {n: round(out[f"encdec_ms@{n}"][name], 3) for n in classes}, flush=True)
        del det
    return out


def _busy_ms(fn, replays: int = 20, top: int = 25) -> Dict[str, object]:
    """Kernel count, summed kernel time, merged busy time, wall span and the ``top`` kernels
    (name, ms, launches) per call of ``fn`` (profiled)."""
    kernels = cuda_kernels(fn, replays)
    spans = sorted((start, end) for _, start, end in kernels)
    by_name: Dict[str, list] = {}
    for name, start, end in kernels:
        t = by_name.setdefault(name[:100], [0.0, 0])
        t[0] += (end - start) / replays / 1e3
        t[1] += 1 / replays
    busy, end = 0.0, float("-inf")
    for a, b in spans:  # union of the intervals (µs); copies and kernels of other streams included
        if b > end:
            busy += b - max(a, end)
            end = b
    wall = spans[-1][1] - spans[0][0]
    return {"kernels": len(spans) / replays, "kernel_sum_ms": sum(b - a for a, b in spans) / replays / 1e3,
            "busy_ms": busy / replays / 1e3, "span_ms": wall / replays / 1e3,
            "idle_ms": (wall - busy) / replays / 1e3,
            "top": [(name, round(ms, 4), round(count, 1)) for name, (ms, count) in
                    sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]]}


def probe_gaps(classes, compile_encdec: bool = False) -> Dict[str, object]:
    det = Detector(DetectorConfig(backbone="vit_h", device="cuda", precision="bf16", runtime="fast",
                                  compile_encdec=compile_encdec))
    px = det.preprocess(frames(1)[0])[0]
    feat = det._bb.run(px, 0).clone()
    out: Dict[str, object] = {"backbone": _busy_ms(lambda: det._bb.run(px, 0))}
    out["backbone"]["graph_ms"] = cuda_median_ms(lambda: det._bb.run(px, 0))
    print("backbone", json.dumps(out["backbone"]), flush=True)
    for n in classes:
        det.set_classes(list(COCO_CLASSES[:n]))
        row = _busy_ms(lambda: det.encode_decode(feat))
        row["graph_ms"] = cuda_median_ms(lambda: det.encode_decode(feat))
        out[f"encdec@{n}"] = row
        print(f"enc-dec {n}", json.dumps(row), flush=True)
    return out


def probe_gemms() -> Dict[str, object]:
    import torch.nn.functional as F


    tokens, dim, hidden = 5184, 1024, 4736
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g) * scale

    x, h = rand(tokens, dim), rand(tokens, hidden)
    w1, b1, w2, b2 = rand(hidden, dim, scale=0.03), rand(hidden), rand(dim, hidden, scale=0.015), rand(dim)
    wq, bq, wp = rand(3 * dim, dim, scale=0.03), rand(3 * dim), rand(dim, dim, scale=0.03)
    flop_mlp, flop_qkv, flop_proj = 2 * tokens * dim * hidden, 2 * tokens * dim * 3 * dim, 2 * tokens * dim * dim
    cases = {
        "fc1_gelu_epilogue": (lambda: torch._addmm_activation(b1, x, w1.t(), use_gelu=True), flop_mlp),
        "fc1_bias": (lambda: torch.addmm(b1, x, w1.t()), flop_mlp),
        "fc1_no_bias": (lambda: torch.mm(x, w1.t()), flop_mlp),
        "fc2_bias": (lambda: torch.addmm(b2, h, w2.t()), flop_mlp),
        "qkv_bias": (lambda: torch.addmm(bq, x, wq.t()), flop_qkv),
        # the residual stream as the GEMM's C operand (beta = 1) instead of its bias vector
        "fc2_residual": (lambda: torch.addmm(x, h, w2.t()), flop_mlp),
        "proj_bias": (lambda: torch.addmm(b2, x, wp.t()), flop_proj),
        "proj_residual": (lambda: torch.addmm(x, x, wp.t()), flop_proj),
    }
    autotuned = {
        "fc1_gelu_max_autotune": (lambda a: F.gelu(F.linear(a, w1, b1), approximate="tanh"), x, flop_mlp),
        "fc2_max_autotune": (lambda a: F.linear(a, w2, b2), h, flop_mlp),
        "qkv_max_autotune": (lambda a: F.linear(a, wq, bq), x, flop_qkv),
    }
    for name, (fn, arg, flop) in autotuned.items():
        compiled = torch.compile(fn, mode="max-autotune-no-cudagraphs")
        compiled(arg)
        cases[name] = (lambda c=compiled, a=arg: c(a), flop)
    out: Dict[str, object] = {}
    for name, (fn, flop) in cases.items():
        ms = cuda_events_ms(fn)
        out[name] = {"us": round(ms * 1e3, 1), "tflops": round(flop / ms / 1e9, 1)}
        print(name, out[name], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=("compile", "overlap", "backbone", "attention", "gaps", "gemms"))
    ap.add_argument("--mode", default="auto", choices=("off", "static", "auto"), help="compile probe")
    ap.add_argument("--classes", nargs="+", type=int, default=[1, 4], help="overlap, attention and gaps probes")
    ap.add_argument("--compile-encdec", action="store_true", help="overlap and gaps probes: compiled enc-dec loops")
    ap.add_argument("--out", default="artifacts/probe")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("runtime_probe needs a CUDA GPU")
    if args.probe == "compile":
        result = probe_compile(args.mode)
        name = f"compile_{args.mode}"
    elif args.probe == "overlap":
        result = probe_overlap(args.classes, args.compile_encdec)
        name = "overlap_compiled" if args.compile_encdec else "overlap"
    elif args.probe == "gaps":
        result = probe_gaps(args.classes, args.compile_encdec)
        name = "gaps_compiled" if args.compile_encdec else "gaps"
    elif args.probe == "gemms":
        result = probe_gemms()
        name = "gemms"
    elif args.probe == "backbone":
        result = probe_backbone()
        name = "backbone"
    else:
        result = probe_attention(args.classes)
        name = "attention"
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": result}
    print(json.dumps(result, indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
