"""Logic gate networks: training-step speed/memory and packed inference throughput, as ratios.

Every figure is measured in this run, each candidate in its own fresh process (one after the other,
never concurrently; the candidates take turns over several rounds so that load changes on a shared
machine affect all of them), as the median of the repeats:

- training step (forward + backward), 4 layers x 64,000 gates on 2x34x34 binary inputs, batch 128,
  2 threads: marble_nb's `LogicLayer` (default `implementation="fast"`: the C kernel on CPU) against
  (a) the 16-output formulation from the paper's formulas (`implementation="python"`, difflogic's
  portable path) and (b) torchlogix's `LogicDense` (skipped with a message when torchlogix is not
  installed; install it with `pip install --no-deps torchlogix`). marble_nb's PyTorch-only form
  (`implementation="torch"`, the fallback without a C compiler) is measured alongside. Goals: >= 10x
  faster than (a), >= 2x faster than (b), <= 1/8 of (a)'s extra peak memory. Process CPU time per
  step is printed too: on a shared machine it is less disturbed by other processes than wall time.
- packed inference, 784 inputs -> 4 x 8,000 gates -> GroupSum(10), one thread, bool inputs
  (packing included): samples/s of `compile_logic` (pure PyTorch and generated C) against the float
  eval path. Goals: >= 1,000,000 samples/s and >= 100x the float eval path.

Run: `python benchmarks/logic.py [--part train|packed|all] [--width 64000] [--repeats 2] [--rounds 3]`.
The training part needs about 7 GB for baseline (a): run it alone.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
import types
from itertools import pairwise


def _rss_mb() -> float:
    "Current resident set size of this process in MiB."
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    "Peak resident set size of this process so far in MiB."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _import_torchlogix_layers():
    "torchlogix.layers without the package __init__ (its circuit module needs Python >= 3.12)."
    spec = importlib.util.find_spec("torchlogix")
    if spec is None:
        return None
    package = types.ModuleType("torchlogix")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchlogix"] = package
    return importlib.import_module("torchlogix.layers")


def _logic_stack(candidate: str, in_dim: int, width: int, depth: int, k: int, tau: float):
    "The layer stack of one candidate: 'fast', 'torch' (marble_nb), 'python' (16 outputs) or 'torchlogix'."
    import torch

    if candidate == "torchlogix":
        layers = _import_torchlogix_layers()
        dims = [in_dim] + [width] * depth
        body = [layers.LogicDense(i, o, device="cpu") for i, o in pairwise(dims)]
        return torch.nn.Sequential(torch.nn.Flatten(), *body, layers.GroupSum(k, tau))
    from marble_nb.logic import GroupSum, LogicLayer

    dims = [in_dim] + [width] * depth
    body = [LogicLayer(i, o, implementation=candidate, seed=s) for s, (i, o) in enumerate(pairwise(dims))]
    return torch.nn.Sequential(torch.nn.Flatten(), *body, GroupSum(k, tau))


def _use_mmap_for_large_blocks() -> bool:
    "Make glibc serve blocks >= 1 MiB by mmap, so that RSS follows the live tensors (False if not glibc)."
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD


def child_train(candidate: str, width: int, batch: int, repeats: int, live_memory: bool = False) -> dict:
    "Median training-step time and extra peak memory of one candidate (runs in a fresh process)."
    import torch
    import torch.nn.functional as F

    if live_memory and not _use_mmap_for_large_blocks():
        raise RuntimeError("live-memory measurement needs glibc's mallopt")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = _logic_stack(candidate, 2 * 34 * 34, width, 4, 10, tau=width / 100)
    x = (torch.rand(batch, 2, 34, 34) < 0.3).float()
    labels = torch.randint(0, 10, (batch,))
    rss_before = _rss_mb()
    times, cpu_times = [], []
    for i in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        F.cross_entropy(model(x), labels).backward()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocator and caches (and builds the C kernel if it is not cached)
            times.append(elapsed)
            cpu_times.append(cpu)
    return {"times": times, "cpu_times": cpu_times, "extra_peak_mb": _peak_mb() - rss_before}


def _run_child(part: str, candidate: str, **kwargs) -> dict | None:
    "Run one measurement in a fresh Python process; None (with the reason printed) if it failed."
    cmd = [sys.executable, __file__, "--child", part, "--candidate", candidate, "--kwargs", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"  {candidate}: failed\n{proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _interleaved(part: str, candidates: list[str], rounds: int, **kwargs) -> dict[str, dict]:
    "Run every candidate once per round, in turn, so that load changes on a shared machine hit all alike."
    runs: dict[str, list[dict]] = {c: [] for c in candidates}
    for _ in range(rounds):
        for candidate in candidates:
            result = _run_child(part, candidate, **kwargs)
            if result is not None:
                runs[candidate].append(result)
    return {c: r for c, r in runs.items() if r}


def bench_train(width: int, batch: int, repeats: int, rounds: int):
    "Training step: marble_nb fast layer vs the 16-output formulation and torchlogix."
    print(
        f"== training step: 4 x {width} gates, input 2x34x34, batch {batch}, 2 threads; median of {rounds} rounds x "
        f"{repeats} steps, candidates interleaved"
    )
    print("   extra peak RSS with the default allocator, and 'live': extra peak RSS when glibc mmaps every block")
    print("   >= 1 MiB (freed memory returns to the OS at once, so RSS follows the live tensors)")
    candidates = ["fast", "torch", "python"]
    if importlib.util.find_spec("torchlogix") is None:
        print("  torchlogix: not installed, baseline (b) skipped (pip install --no-deps torchlogix)")
    else:
        candidates.append("torchlogix")
    timed = _interleaved("train", candidates, rounds, width=width, batch=batch, repeats=repeats)
    live = _interleaved("train", candidates, 1, width=width, batch=batch, repeats=1, live_memory=True)
    results = {
        c: {
            "seconds": statistics.median([t for r in timed[c] for t in r["times"]]),
            "cpu": statistics.median([t for r in timed[c] for t in r["cpu_times"]]),
            "rss_mb": max(r["extra_peak_mb"] for r in timed[c]),
            "live_mb": live[c][0]["extra_peak_mb"],
        }
        for c in candidates
        if c in timed and c in live
    }
    fast = results.get("fast")
    if not fast:
        return
    labels = {
        "fast": "marble_nb (C)",
        "torch": "marble_nb (torch)",
        "python": "(a) 16-output",
        "torchlogix": "(b) torchlogix",
    }
    for name, r in results.items():
        line = (
            f"  {labels[name]:18s} {r['seconds']:7.3f} s  cpu {r['cpu']:7.3f} s  RSS {r['rss_mb']:6.0f} MiB  "
            f"live {r['live_mb']:6.0f} MiB"
        )
        if name != "fast":
            line += (
                f" | fast is {r['seconds'] / fast['seconds']:5.2f}x faster (cpu {r['cpu'] / fast['cpu']:5.2f}x), "
                f"memory ratio RSS {fast['rss_mb'] / r['rss_mb']:.3f} live {fast['live_mb'] / r['live_mb']:.3f}"
            )
        print(line)
    _print_goals(results)


def _print_goals(results: dict[str, dict]):
    "The issue's goals for the training step, each as measured ratio against its threshold."
    fast, a, b = results["fast"], results.get("python"), results.get("torchlogix")
    goals = []
    if a:
        goals.append(("speed-up vs (a)", a["seconds"] / fast["seconds"], ">=", 10.0))
        for kind in ("rss", "live"):
            goals.append((f"peak memory ({kind}) / (a)'s", fast[f"{kind}_mb"] / a[f"{kind}_mb"], "<=", 1 / 8))
    if b:
        goals.append(("speed-up vs (b)", b["seconds"] / fast["seconds"], ">=", 2.0))
    for what, value, op, goal in goals:
        met = value >= goal if op == ">=" else value <= goal
        print(f"  goal {what:28s} {value:7.3f} {op} {goal:.3f}: {'met' if met else 'NOT met'}")


def child_packed(candidate: str, n: int, repeats: int) -> dict:
    "Samples/s of one inference path on bool inputs, one thread (runs in a fresh process)."
    import torch

    from marble_nb.logic_compile import compile_logic

    torch.set_num_threads(1)
    model = _logic_stack("fast", 784, 8000, 4, 10, tau=10.0).eval()
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) < 0.5
    if candidate == "float":
        run = lambda: model(x.float())  # noqa: E731
    else:
        start = time.perf_counter()
        compiled = compile_logic(model, backend=candidate)
        build = time.perf_counter() - start
        with torch.no_grad():
            check = x[:1000]
            identical = torch.equal(compiled(check), model(check.float()))
        run = lambda: compiled(x)  # noqa: E731
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    result = {"samples_per_s": n / statistics.median(times[1:])}  # the first run warms up
    if candidate != "float":
        result.update(identical=identical, build_s=build)
    return result


def bench_packed(repeats: int, rounds: int):
    "Packed inference (bool input, packing included) vs the float eval path, one thread."
    print(
        f"== packed inference: 784 -> 4 x 8000 gates -> GroupSum(10), bool input, 1 thread; median of {rounds} "
        f"rounds x {repeats} runs, candidates interleaved"
    )
    sizes = {"float": 2048, "torch": 65536, "c": 262144}
    runs = {c: [] for c in sizes}
    for _ in range(rounds):
        for candidate, n in sizes.items():
            result = _run_child("packed", candidate, n=n, repeats=repeats)
            if result is not None:
                runs[candidate].append(result)
    if not runs["float"]:
        return
    rate = {c: statistics.median(r["samples_per_s"] for r in rs) for c, rs in runs.items() if rs}
    print(f"  float eval path      {rate['float']:12,.0f} samples/s     1.0x")
    for backend in ("torch", "c"):
        if backend in rate:
            identical = all(r["identical"] for r in runs[backend])
            build = max(r["build_s"] for r in runs[backend])
            print(
                f"  packed, {backend:5s} backend {rate[backend]:12,.0f} samples/s {rate[backend] / rate['float']:7.1f}x"
                f"  (identical to float eval: {identical}, compile <= {build:.1f} s)"
            )


CHILDREN = {"train": child_train, "packed": child_packed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["train", "packed", "all"], default="all")
    parser.add_argument("--width", type=int, default=64000, help="gates per layer in the training benchmark")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="measured steps/runs per child process")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per candidate, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--candidate", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.candidate, **json.loads(args.kwargs))))
        return
    if args.part in ("packed", "all"):
        bench_packed(args.repeats, args.rounds)
    if args.part in ("train", "all"):
        bench_train(args.width, args.batch, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
