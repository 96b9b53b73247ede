"""Where the time goes: kernel-level profile of the backbone and the encoder-decoder on a GPU.

    python dev/profile_stages.py --backbone vit_h --classes 4 16 --out artifacts/profile

Runs the fast runtime's modules without CUDA graphs (same kernels, visible to the profiler), groups
the kernels into families (GEMM, flash/efficient attention, normalisation, elementwise, ...), and
times the attention shapes of the encoder-decoder under each SDPA backend. Writes <out>.txt (the
tables) and <out>.json (kernel families per stage, SDPA timings, GPU and versions).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from timing import cuda_kernels

from dart_ros.coco import COCO_CLASSES
from dart_ros.config import PRECISIONS, PROMPT_MODES, DetectorConfig
from dart_ros.detector import Detector
from dart_ros.presets import DEFAULT_BACKBONE, list_backbones

FAMILIES = (  # first match wins; names of cuBLAS/cutlass/flash/ATen kernels
    ("attention-ours", r"^_attention_kernel"),  # dart_ros.runtime.attention (Triton)
    ("attention-flash", r"flash|fmha_.*fwd|cudnn.*(sdpa|attn)"),
    ("attention-efficient", r"efficient_attention|mem_eff|fmha_cutlass|attention_kernel"),
    ("gemm", r"gemm|sm90_xmma|cutlass|cublas|ampere_|sm80_|nvjet"),
    ("conv", r"conv|implicit|winograd|dgrad|wgrad|fprop"),
    ("norm", r"layer_norm|LayerNorm|group_norm|batch_norm"),
    ("softmax", r"softmax"),
    ("reduce", r"reduce|sum_|mean"),
    ("copy/cast", r"copy|cat|CatArray|index|gather|scatter|transpose|permute|elementwise_kernel_with_index"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton"),
)


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return fam
    return "other"


def kernel_table(fn: Callable[[], object], iters: int = 3) -> Dict[str, object]:
    """Per-kernel device time (µs per call) of ``fn``, after warm-up, grouped into families."""
    kernels: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0])
    for name, start, end in cuda_kernels(fn, iters, warmup=3):
        k = kernels[name]
        k[0] += end - start
        k[1] += 1
    rows = sorted(((n, t / iters, c // iters) for n, (t, c) in kernels.items()), key=lambda r: -r[1])
    fams: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0])
    for n, t, c in rows:
        fams[family(n)][0] += t
        fams[family(n)][1] += c
    total = sum(t for _, t, _ in rows)
    return {
        "total_us": total,
        "launches": sum(c for _, _, c in rows),
        "families": {f: {"us": t, "launches": c} for f, (t, c) in sorted(fams.items(), key=lambda kv: -kv[1][0])},
        "top": [{"kernel": n[:160], "us": t, "launches": c} for n, t, c in rows[:25]],
    }


def wall_ms(fn: Callable[[], object], iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return float(np.median(out))


def sdpa_timings(
    dtype: torch.dtype, classes: int, tokens: int, queries: int, heads: int, head_dim: int
) -> Dict[str, Dict[str, float]]:
    """Encoder self-attention and decoder biased cross-attention shapes under each SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = "cuda"
    q = torch.randn(classes, heads, tokens, head_dim, device=dev, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    qd = torch.randn(classes, heads, queries, head_dim, device=dev, dtype=dtype)
    bias = torch.randn(classes, heads, queries, tokens, device=dev, dtype=dtype)
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    cases = {
        "encoder_self_attn": lambda: F.scaled_dot_product_attention(q, k, v),
        "decoder_cross_attn_bias": lambda: F.scaled_dot_product_attention(qd, k, v, attn_mask=bias),
    }
    out: Dict[str, Dict[str, float]] = {}
    for case, fn in cases.items():
        out[case] = {}
        flops = 4 * classes * heads * (tokens if case.startswith("encoder") else queries) * tokens * head_dim
        for name, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    ms = wall_ms(fn)
                out[case][name] = {"ms": ms, "tflops": flops / ms / 1e9}
            except RuntimeError as e:
                out[case][name] = {"error": str(e).splitlines()[0][:120]}
        out[case]["default"] = {"ms": wall_ms(fn)}
    return out


def fmt_table(title: str, t: Dict[str, object]) -> str:
    lines = [f"== {title}: {t['total_us'] / 1e3:.2f} ms of kernels, {t['launches']} launches"]
    for f, v in t["families"].items():
        lines.append(f"  {f:22s} {v['us'] / 1e3:8.3f} ms  {v['launches']:5d} launches")
    lines.append("  top kernels:")
    for r in t["top"][:15]:
        lines.append(f"    {r['us'] / 1e3:8.3f} ms {r['launches']:4d}x  {r['kernel'][:110]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list_backbones())
    ap.add_argument("--classes", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--precision", default="bf16", choices=PRECISIONS)
    ap.add_argument("--prompt-mode", default=DetectorConfig.prompt_mode, choices=PROMPT_MODES)
    ap.add_argument("--out", default="artifacts/profile")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_stages.py profiles GPU kernels: no CUDA device")
    det = Detector(
        DetectorConfig(
            backbone=args.backbone,
            device="cuda",
            runtime="fast",
            precision=args.precision,
            cuda_graphs=False,
            prompt_mode=args.prompt_mode,
        )
    )
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    px = det.preprocess(frame)[0]
    report: Dict[str, object] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "args": vars(args),
        "stages": {},
    }
    texts = []
    with torch.inference_mode():
        bb = lambda: det.features(px)  # noqa: E731
        t = kernel_table(bb)
        t["wall_ms"] = wall_ms(bb)
        report["stages"]["backbone"] = t
        texts.append(fmt_table(f"backbone {args.backbone} (wall {t['wall_ms']:.2f} ms)", t))
        feat = det.features(px).clone()
        for n in args.classes:
            det.set_classes(list(COCO_CLASSES[:n]))
            ed = lambda: det.encode_decode(feat)  # noqa: E731
            t = kernel_table(ed)
            t["wall_ms"] = wall_ms(ed)
            report["stages"][f"encdec_{n}"] = t
            texts.append(fmt_table(f"enc-dec {n} classes (wall {t['wall_ms']:.2f} ms, eager: includes launch gaps)", t))
        arch = det.model.arch
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
        p = det.model.feature_size
        for n in [n for n in args.classes if n <= 16]:  # beyond, the math backend's scores exceed the GPU
            s = sdpa_timings(
                dtype, n, p * p, arch.num_queries, arch.num_heads_encdec, arch.d_model // arch.num_heads_encdec
            )
            report[f"sdpa_{n}"] = s
            texts.append(f"== SDPA backends at {n} classes ({p * p} tokens, {arch.num_queries} queries)")
            for case, d in s.items():
                texts.append(
                    "  "
                    + case
                    + ": "
                    + ", ".join(
                        f"{b} {v['ms']:.3f} ms" + (f" ({v['tflops']:.0f} TFLOP/s)" if "tflops" in v else "")
                        if "ms" in v
                        else f"{b} n/a"
                        for b, v in d.items()
                    )
                )
    text = "\n".join(texts)
    print(text)
    with open(args.out + ".txt", "w") as f:
        f.write(text + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
