"""Training step time with drop-connect vs without (same model, batch and optimizer), in one run.

    PYTHONPATH=. python benchmarks/bench_training.py [--model resnet20] [--width 1] [--batch 128]
        [--shortcut A|B] [--pad-1x1] [--drop-rate 0.2] [--steps 20] [--threads N] [--device auto] [--json]

Plain and drop-connect steps are interleaved in rounds (plain, dc, plain, dc, ...) so a busy
machine slows both alike; the ratio of the medians is printed. Target: at most 1.15.
Also printed: the time of the mask draws alone (one fresh mask for every Conv2d/Linear weight),
and the drop-connect step under `--train-precision bf16` (bfloat16 autocast, as rram train runs it) with
its speed-up over float32 (1.4-2.4x on CPUs with AMX, by model; 0.08x, i.e. 12x slower, on 2 AVX2
cores without bf16 units, 2x-wide ResNet20 option B at batch 256: docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from toolchain.dropconnect import add_dropconnect, weight_modules  # noqa: E402
from toolchain.models import ModelSpec, build_model  # noqa: E402


def make(spec, drop, device, seed=0):
    torch.manual_seed(seed)
    m = build_model(spec).to(device).train()
    if drop > 0:
        add_dropconnect(m, drop, torch.Generator(device=device).manual_seed(1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return m, opt


def step(m, opt, x, y, device, bf16=False):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as toolchain/training/loop.py
        logits = m(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--shortcut", choices=["A", "B"], default="A", help="resnet20 shortcut option")
    ap.add_argument("--pad-1x1", action="store_true", help="1x1 convolutions padded to 3x3")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--drop-rate", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    spec = ModelSpec(a.model, a.width, a.shortcut, a.pad_1x1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(device)
    plain, opt_p = make(spec, 0.0, device)
    dc, opt_d = make(spec, a.drop_rate, device)
    for _ in range(3):  # warm-up
        step(plain, opt_p, x, y, device)
        step(dc, opt_d, x, y, device)
    step(dc, opt_d, x, y, device, bf16=True)
    times = {"plain": [], "dropconnect": [], "bf16": []}
    for _ in range(a.steps):
        for name, (m, o) in (("plain", (plain, opt_p)), ("dropconnect", (dc, opt_d)), ("bf16", (dc, opt_d))):
            t0 = time.perf_counter()
            step(m, o, x, y, device, bf16=name == "bf16")
            times[name].append(time.perf_counter() - t0)
    # mask draws alone: what DropConnect.forward adds per step
    mods = [mod.parametrizations.weight for _, mod in weight_modules(dc)]
    mask_t = []
    with torch.no_grad():
        for _ in range(a.steps):
            t0 = time.perf_counter()
            for plist in mods:
                plist[0](plist.original)
            if device.type == "cuda":
                torch.cuda.synchronize()
            mask_t.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": spec.to_dict(), "batch": a.batch, "drop_rate": a.drop_rate, "device": str(device),
              "threads": torch.get_num_threads(), "steps": a.steps,
              "plain_step_s": med["plain"], "dropconnect_step_s": med["dropconnect"],
              "ratio": med["dropconnect"] / med["plain"], "dropconnect_bf16_step_s": med["bf16"],
              "bf16_speedup": med["dropconnect"] / med["bf16"], "mask_draw_s": statistics.median(mask_t),
              "weights": sum(p.original.numel() for p in mods)}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{spec.describe()}, batch {a.batch}, {device} ({result['threads']} threads), "
              f"{a.steps} steps each")
        print(f"plain step        {1000 * med['plain']:.1f} ms (median)")
        print(f"drop-connect step {1000 * med['dropconnect']:.1f} ms (p={a.drop_rate})")
        print(f"mask draws alone  {1000 * result['mask_draw_s']:.2f} ms for {result['weights']} weights")
        print(f"ratio {result['ratio']:.3f} (target <= 1.15)")
        print(f"drop-connect step, bf16 autocast {1000 * med['bf16']:.1f} ms: "
              f"{result['bf16_speedup']:.2f}x faster than float32 (rram train --train-precision bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
