"""Benchmark: time from clicking Generate to the first image pair, on the world model.

Target: ≤ 5 s on 2 CPU cores. Two figures, each the median of ``--runs`` timed runs after one warm-up:

* ``click -> first pair``: the demo served on 127.0.0.1 and driven with ``gradio_client``, as a
  browser's click is: queue, generation of the first seed's original + unlearned image, PNG
  encoding and both image downloads (the gallery's other seeds keep coming afterwards);
* ``generate_pair``: the same pair from the function directly, without the server.

Wall-clock time is what the target is about; the CPU time of this process (server, client and
torch threads together) is printed beside it, because on a machine shared with other jobs the wall
clock measures the neighbours too: on an idle 2-core machine a run takes about CPU time / 2 or more.

    python benchmarks/bench_demo.py                       # shipped world model + no-red
    python benchmarks/bench_demo.py --weights /tmp/smokeworld --adapter my.safetensors
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter_dir(adapter: str | None) -> str:
    """A directory holding just the adapter to benchmark (default: the shipped no-red)."""
    from concept_erase.loading import resolve_adapter

    path = resolve_adapter(adapter or "no-red")
    d = tempfile.mkdtemp(prefix="bench-demo-")
    os.symlink(path.resolve(), os.path.join(d, path.name))
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="world model directory (default: the shipped one)")
    p.add_argument("--adapter", help="adapter name or file (default: no-red)")
    p.add_argument("--prompt", default="a red circle")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=4, help="seeds per click (the app's default is 4)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is for 2 cores)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gradio_client import Client

    import concept_erase  # noqa: F401  (attaches the pipeline methods)
    from concept_erase import world
    from concept_erase.demo import build_demo, discover_adapters, generate_pair, launch

    pipe = world.load_pipeline("cpu", weights_dir=args.weights)
    try:
        classifier = world.load_classifier(None if args.weights is None else os.path.join(args.weights,
                                                                                          "classifier.safetensors"))
    except Exception as e:  # a smoke world's classifier may not match the default architecture
        print(f"(no classifier: {type(e).__name__})")
        classifier = None
    adapters_dir = _adapter_dir(args.adapter)
    (key,) = discover_adapters(pipe, adapters_dir)
    demo = build_demo(pipe, classifier, adapters_dir)
    _, url, _ = launch(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    call = (args.prompt, "", [key], 1.0)
    sampling = (world.SAMPLING["num_inference_steps"], world.SAMPLING["guidance_scale"])

    first, full, first_cpu = [], [], []
    try:
        for run in range(args.runs + 1):  # run 0 warms up (first adapter load, thread pools)
            t0, c0 = time.perf_counter(), time.process_time()
            job = client.submit(*call, 1000 + run, args.seeds, *sampling, api_name="/generate")
            next(iter(job))  # the first yield: slider pair + verdicts, images downloaded
            t1, c1 = time.perf_counter(), time.process_time()
            job.result()
            t2 = time.perf_counter()
            if run:
                first.append(t1 - t0)
                first_cpu.append(c1 - c0)
                full.append(t2 - t0)
    finally:
        demo.close()

    direct, direct_cpu = [], []
    adapters = {key: discover_adapters(pipe, adapters_dir)[key].adapter}
    for run in range(args.runs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        generate_pair(pipe, args.prompt, 2000 + run, adapters=adapters, classifier=classifier, **world.SAMPLING)
        if run:
            direct.append(time.perf_counter() - t0)
            direct_cpu.append(time.process_time() - c0)

    med = statistics.median(first)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    print(f"world model {side}x{side}, {sampling[0]} steps, guidance {sampling[1]}, adapter {key}, "
          f"torch threads {args.threads}, {args.runs} runs (median), load average {os.getloadavg()[0]:.1f}")
    print(f"click -> first pair      {med:6.2f} s wall  {statistics.median(first_cpu):6.2f} s CPU   "
          f"(wall min {min(first):.2f}, max {max(first):.2f})   target ≤ 5 s: {'met' if med <= 5 else 'MISSED'}")
    print(f"click -> {args.seeds}-seed gallery   {statistics.median(full):6.2f} s wall")
    print(f"generate_pair direct     {statistics.median(direct):6.2f} s wall  "
          f"{statistics.median(direct_cpu):6.2f} s CPU")


if __name__ == "__main__":
    main()
