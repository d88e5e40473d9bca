"""GPU benchmark: SEMU, ESD-x and UCE on the SD 1.5 and SDXL UNet architectures at their native sizes.

    python benchmarks/bench_gpu.py                      # CUDA, fp16 base: SD 1.5 at 512 px, SDXL at 1024 px
    python benchmarks/bench_gpu.py --dtype bf16 --steps 10
    python benchmarks/bench_gpu.py --device cpu --smoke  # tiny UNets of both layouts: checks the script runs

Each architecture is built with random weights (nothing is downloaded) and measured by
``benchmarks/bench_scale.py``'s runner: the real trainers run unmodified, with timers around their
phases and ``torch.cuda.max_memory_allocated`` (reset at every phase) for peak GPU memory. Reported per
method: seconds per training step (batch 1), the phases of the set-up (data, gradient, SVD), the
projected total time of the default recipe (``bench_scale.OFFICIAL``: SEMU 32 + 32 images × 20 sampler
steps, 32 gradient images, 150 steps of batch 16; ESD 200 iterations), and the peak memory. SEMU also
runs with its two cost options (``stream_gradient``, ``target_pool``). Trainable parameters stay float32
whatever ``--dtype`` is (the base is frozen in it), as in diffusers' training scripts.

Writes ``benchmarks/results/gpu.json`` and prints one Markdown table per architecture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# (UNet layout, latent side): 512 px for SD 1.5 and 1024 px for SDXL, the VAE downsampling 8×
ARCHITECTURES = {"sd15": ("sd15", 64), "sdxl": ("sdxl", 128)}
SMOKE = {"sd15": ("tiny", 8), "sdxl": ("tiny-sdxl", 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--steps", type=int, default=5, help="training steps / ESD iterations per run")
    ap.add_argument("--sample-steps", type=int, default=10, help="sampler steps for data and ESD's x_t")
    ap.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    ap.add_argument("--smoke", action="store_true", help="tiny UNets of the same layouts (for CPU checks)")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    args = ap.parse_args()
    table = SMOKE if args.smoke else ARCHITECTURES
    results = {}
    for arch in args.architectures:
        unet, latent = table[arch]
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, str(HERE / "bench_scale.py"), "--quick", "--device", args.device, "--dtype",
                   args.dtype, "--unet", unet, "--latent", str(latent), "--steps", str(args.steps),
                   "--sample-steps", str(args.sample_steps), "--out", f.name]
            print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            results[arch] = json.loads(Path(f.name).read_text())
    Path(args.out).write_text(json.dumps({"device": args.device, "dtype": args.dtype, "smoke": args.smoke,
                                          "architectures": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
