"""Benchmark: the demo server's memory under many sessions uploading the most they are allowed.

Starts ``concept-erase demo`` on the world model in a subprocess, then ``--sessions`` concurrent
``gradio_client`` sessions each upload ``--uploads-per-session`` distinct adapters of the largest
allowed size (``--max-upload-mb``). The server's resident memory (``VmRSS`` of its process, sampled
every 0.2 s) is reported idle, at its peak, and after the sessions' uploads expire (``--ttl``).

Targets: the peak stays under the stated bound — idle + the server-wide upload budget
(``--upload-budget-mb``) + two files in flight (one being read and checked, one being copied) +
256 MB for Gradio and the upload transfers — and memory returns to within 10% of idle after expiry.

    python benchmarks/bench_demo_memory.py                      # 20 sessions x 4 uploads of 25 MB
    python benchmarks/bench_demo_memory.py --max-upload-mb 100  # the default file limit (8 GB of uploads)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "demo_memory.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _adapters(folder: Path, count: int, size_mb: float) -> list[Path]:
    """``count`` distinct adapters for the world UNet of about ``size_mb`` each (full-rank LoRA on
    as many linear layers as it takes, every rank within min(out, in))."""
    import torch

    from concept_erase import UnlearningAdapter, world

    unet = world.load_pipeline().unet
    layers = [(n, m.weight.shape) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]
    budget = size_mb * 2**20 * 0.97
    plan, used = [], 0
    for name, (out_f, in_f) in sorted(layers, key=lambda x: -min(x[1]) * sum(x[1])):
        full = min(out_f, in_f)
        per_rank = 4 * (in_f + out_f)
        rank = min(full, int((budget - used) // per_rank))
        if rank < 1:
            continue
        plan.append((name, rank, in_f, out_f))
        used += rank * per_rank
    paths = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        tensors = {}
        for name, rank, in_f, out_f in plan:
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 1e-3
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 1e-3
        adapter = UnlearningAdapter(tensors, {"concept": {"name": f"bench-{i}"}})
        paths.append(adapter.save(folder / f"a{i:03d}.safetensors"))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--uploads-per-session", type=int, default=4)
    p.add_argument("--max-upload-mb", type=float, default=25.0)
    p.add_argument("--upload-budget-mb", type=float, default=400.0)
    p.add_argument("--max-uploads", type=int, default=16)
    p.add_argument("--ttl", type=float, default=20.0, help="seconds of idleness before a session's uploads go")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = _adapters(Path(tmp), args.sessions * args.uploads_per_session, args.max_upload_mb * 0.98)
        file_mb = os.path.getsize(files[0]) / 2**20
        print(f"{len(files)} adapters of {file_mb:.1f} MB written in {time.perf_counter() - t0:.0f} s")

        port = _free_port()
        cmd = [sys.executable, "-m", "concept_erase.cli", "demo", "--port", str(port), "--device", "cpu",
               "--max-upload-mb", str(args.max_upload_mb), "--upload-budget-mb", str(args.upload_budget_mb),
               "--max-uploads", str(args.max_uploads), "--uploads-per-session", str(args.uploads_per_session),
               "--session-ttl", str(args.ttl)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the demo server did not start")
                    time.sleep(0.5)
            warm = Client(url, verbose=False)
            warm.predict("a red circle", "", ["no-red"], 1.0, 0, 1, 20, 5.0, api_name="/generate")
            time.sleep(2)
            idle = _rss_mb(server.pid)
            print(f"idle: {idle:.0f} MB")

            samples: list[tuple[float, float]] = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append((time.perf_counter(), _rss_mb(server.pid)))
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            statuses: list[str] = []
            lock = threading.Lock()

            def session(i: int):
                client = Client(url, verbose=False)
                for k in range(args.uploads_per_session):
                    path = files[i * args.uploads_per_session + k]
                    _, status, *_ = client.predict(handle_file(str(path)), [], api_name="/upload_adapter")
                    with lock:
                        statuses.append(status)

            t_up = time.perf_counter()
            threads = [threading.Thread(target=session, args=(i,)) for i in range(args.sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            upload_s = time.perf_counter() - t_up
            loaded = _rss_mb(server.pid)
            accepted = sum(s.startswith("✓") for s in statuses)
            print(f"{len(statuses)} uploads in {upload_s:.0f} s: {accepted} accepted, "
                  f"{len(statuses) - accepted} refused; memory {loaded:.0f} MB")
            # after the last upload every session is idle: wait for them to expire
            t_idle = time.perf_counter()
            after = loaded
            while time.perf_counter() - t_idle < args.ttl + 90:
                time.sleep(1)
                after = _rss_mb(server.pid)
                if after <= 1.10 * idle and time.perf_counter() - t_idle > args.ttl + 2:
                    break
            returned_s = time.perf_counter() - t_idle
            stop.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(timeout=30)

    peak = max(m for _, m in samples)
    bound = idle + args.upload_budget_mb + 2 * args.max_upload_mb + 256
    reasons = sorted({s.split("**Upload refused.** ", 1)[-1][:60] for s in statuses if not s.startswith("✓")})
    result = {
        "sessions": args.sessions, "uploads_per_session": args.uploads_per_session, "file_mb": round(file_mb, 1),
        "limits": {"max_upload_mb": args.max_upload_mb, "upload_budget_mb": args.upload_budget_mb,
                   "max_uploads": args.max_uploads, "session_ttl_s": args.ttl},
        "uploads": len(statuses), "accepted": accepted, "refusals": reasons, "upload_seconds": round(upload_s, 1),
        "rss_mb": {"idle": round(idle), "peak": round(peak), "after_uploads": round(loaded),
                   "after_expiry": round(after)},
        "bound_mb": round(bound), "peak_under_bound": peak <= bound,
        "after_expiry_within_10pct_of_idle": after <= 1.10 * idle, "seconds_to_return": round(returned_s, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
