"""Kernel-level probes of the two walls: the flash kernel's exponentials and FP8 GEMMs (CUDA).

    python dev/kernel_probe.py --out artifacts/kernel_probe

1. The flash-attention kernel (dart_ros.runtime.attention) at the encoder's shapes (N classes ×
   5,184 tokens, 8 heads of 32; self-attention by TMA, cross-attention to a padded 33-token
   prompt) and the ViT's (16 heads of 64: nine 576-token windows, one global 5,184-token
   sequence), once per exponential mode: GPU time, and the error against fp32 SDPA next to mode
   0's. With the FLOPs and exponentials of each call it shows how far each mode is from the
   tensor-core and the special-function-unit floors.
2. GEMMs of the ViT block and the encoder FFN in bf16 against FP8 (e4m3, row-wise scales, bf16
   out, ``torch._scaled_mm``), and the cost of quantising the activations (row amax + scale + cast).
3. The encoder's self-attention over fixed block shapes and register caps (``--only-variants``
   runs just this): how much more programs per SM buy.

Writes <out>.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from timing import cuda_events_ms

from dart_ros.runtime import attention as att


def _reference(q, k, v, heads, mask=None):
    n, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.float().reshape(n, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2).reshape(n, lq, c)


def attention_cases(classes: int):
    dev, dt = "cuda", torch.bfloat16
    n, tokens, heads, d, text = classes, 72 * 72, 8, 32, 33
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, device=dev, dtype=dt, generator=g) * scale

    qk = r(n, tokens, 2 * heads * d, scale=2.0)
    v = r(n, tokens, heads * d)
    kt, vt = r(n, text, heads * d, scale=2.0), r(n, text, heads * d)
    mask = torch.ones(n, text, dtype=torch.bool, device=dev)
    mask[::2, 12:] = False
    cases = {
        f"encoder self N={n}": (qk[..., : heads * d], qk[..., heads * d :], v, heads, None),
        f"encoder cross N={n}": (qk[..., : heads * d], kt, vt, heads, mask),
    }
    for seqs, length, name in ((9, 576, "ViT windows"), (1, 5184, "ViT global")):
        rope = r(seqs, length, 2, 1024, scale=2.0)
        qkv = r(seqs, length, 3, 1024)
        cases[name] = (rope[:, :, 0], rope[:, :, 1], qkv[:, :, 2], 16, None)
    return cases


def probe_attention(classes: int):
    rows = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    clock_ghz = 1.98  # H100/H200 SXM boost clock
    for name, (q, k, v, heads, mask) in attention_cases(classes).items():
        n, lq, c = q.shape
        lk = k.shape[1]
        exps = n * heads * lq * lk
        flops = 4 * n * lq * lk * c
        sdpa_mask = mask[:, None, None, :] if mask is not None else None
        ref = _reference(q, k, v, heads, sdpa_mask)
        base = None
        for mode in (0, 1, 2):
            try:
                fn = lambda q=q, k=k, v=v, h=heads, m=mask, e=mode: att.launch(q, k, v, h, m, exp_mode=e)  # noqa: E731
                out = fn()
                torch.cuda.synchronize()
                ms = cuda_events_ms(fn)
            except Exception as e:  # noqa: BLE001 - a mode this GPU or Triton cannot compile
                rows.append({"case": name, "exp_mode": mode, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            err = (out.float() - ref).abs()
            row = {
                "case": name,
                "exp_mode": mode,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "exp_per_clk_per_sm": exps / (ms * 1e-3) / (sms * clock_ghz * 1e9),
                "max_abs_err": err.max().item(),
                "mean_abs_err": err.mean().item(),
            }
            base = base or row
            row["speedup_vs_mode0"] = base["ms"] / ms
            rows.append(row)
            print(
                f"{name:24s} mode {mode}: {ms:7.3f} ms  {row['tflops']:6.1f} TFLOP/s  "
                f"{row['exp_per_clk_per_sm']:5.1f} exp/clk/SM  err max {row['max_abs_err']:.2e} "
                f"mean {row['mean_abs_err']:.2e}  x{row['speedup_vs_mode0']:.2f}",
                flush=True,
            )
    return rows


def probe_variants(classes: int):
    """The encoder's self-attention (TMA kernel) over fixed block shapes and register caps: a cap
    lets more programs share an SM (more warps to hide the score GEMM's latency) at the risk of
    spills. The autotuned default first."""
    import triton

    q, k, v, heads, _ = attention_cases(classes)[f"encoder self N={classes}"]
    n, lq, c = q.shape
    flops = 4 * n * lq * k.shape[1] * c
    ref = _reference(q, k, v, heads)
    rows = []

    def run(label, fn):
        try:
            out = fn()
            torch.cuda.synchronize()
            ms = cuda_events_ms(fn)
        except Exception as e:  # noqa: BLE001 - a variant this Triton cannot compile
            rows.append({"variant": label, "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"{label:36s} failed: {rows[-1]['error'][:120]}", flush=True)
            return
        err = (out.float() - ref).abs().max().item()
        rows.append({"variant": label, "ms": ms, "tflops": flops / ms / 1e9, "max_abs_err": err})
        print(f"{label:36s} {ms:7.3f} ms {flops / ms / 1e9:6.1f} TFLOP/s err {err:.2e}", flush=True)

    run("autotuned", lambda: att.launch(q, k, v, heads))
    # (BLOCK_M, BLOCK_N, warps, stages, register caps): 64 × 128 tiles need 138 registers a thread
    # uncapped (three programs of 4 warps per SM), 128 or 106 capped (four), 96 with spills (five).
    shapes = (
        (64, 128, 4, 3, (None, 128, 112, 96)),
        (64, 128, 4, 2, (None, 112)),
        (64, 64, 4, 3, (None,)),
        (64, 64, 4, 4, (None,)),
        (128, 64, 8, 3, (None,)),
        (128, 128, 8, 3, (None, 128)),
    )
    for bm, bn, w, st, caps in shapes:
        for cap in caps:
            cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=cap)
            label = f"{bm}x{bn} w{w} s{st} regs<={cap or '-'}"
            run(label, lambda c=cfg: att.launch(q, k, v, heads, config=c, tma=True))
    return rows


def _quantise_rows(x: torch.Tensor):
    amax = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-6)
    scale = amax / 448.0
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def probe_gemms(classes: int):
    rows = []
    dev, dt = "cuda", torch.bfloat16
    shapes = {
        "ViT qkv": (5184, 1024, 3072),
        "ViT proj": (5184, 1024, 1024),
        "ViT fc1": (5184, 1024, 4736),
        "ViT fc2": (5184, 4736, 1024),
        f"enc FFN1 N={classes}": (classes * 5184, 256, 2048),
        f"enc FFN2 N={classes}": (classes * 5184, 2048, 256),
        f"enc qk N={classes}": (classes * 5184, 256, 512),
    }
    quant = torch.compile(_quantise_rows)
    for name, (m, k, n) in shapes.items():
        x = torch.randn(m, k, device=dev, dtype=dt)
        w = torch.randn(n, k, device=dev, dtype=dt) / math.sqrt(k)
        b = torch.randn(n, device=dev, dtype=dt)
        flops = 2 * m * k * n
        bf16_ms = cuda_events_ms(lambda x=x, w=w, b=b: F.linear(x, w, b))
        xq, xs = quant(x)
        wq, ws = _quantise_rows(w)
        row = {"gemm": name, "m": m, "k": k, "n": n, "bf16_ms": bf16_ms, "bf16_tflops": flops / bf16_ms / 1e9}
        try:
            fp8 = lambda xq=xq, wq=wq, xs=xs, ws=ws, b=b: torch._scaled_mm(  # noqa: E731
                xq, wq.t(), scale_a=xs, scale_b=ws.t(), bias=b, out_dtype=dt
            )
            ref = F.linear(x.float(), w.float(), b.float())
            y = fp8()
            row["fp8_ms"] = cuda_events_ms(fp8)
            row["fp8_tflops"] = flops / row["fp8_ms"] / 1e9
            row["quantise_ms"] = cuda_events_ms(lambda x=x: quant(x))
            row["fp8_rel_err"] = ((y.float() - ref).norm() / ref.norm()).item()
            row["bf16_rel_err"] = ((F.linear(x, w, b).float() - ref).norm() / ref.norm()).item()
        except Exception as e:  # noqa: BLE001
            row["fp8_error"] = f"{type(e).__name__}: {e}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=16, help="classes (batch of the encoder's shapes)")
    ap.add_argument("--skip-gemms", action="store_true")
    ap.add_argument("--only-variants", action="store_true", help="only the self-attention variants")
    ap.add_argument("--out", default="artifacts/kernel_probe")
    args = ap.parse_args()
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "attention_variants": probe_variants(args.classes),
        "attention": [] if args.only_variants else probe_attention(args.classes),
        "gemms": [] if args.skip_gemms or args.only_variants else probe_gemms(args.classes),
    }
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
