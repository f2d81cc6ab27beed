"""Measuring helpers shared by the benchmark scripts: medians of repeated timings, peak RSS of a fresh process."""

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> float:
    "Median wall time of `fn()` over `repeats` calls, after `warmup` calls."
    return median_times([fn], repeats, warmup)[0]


def median_times(fns: list[Callable[[], object]], repeats: int = 7, warmup: int = 1) -> list[float]:
    """Median wall time of each of `fns` over `repeats` rounds, after `warmup` rounds; every round calls each
    function once, in turn, so that a change of machine load during the run affects all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


PEAK_RSS = """
import sys, threading, time, psutil
sys.path.insert(0, {benchmarks!r})
{setup}
proc, peak, done, ready = psutil.Process(), [0], threading.Event(), threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        ready.set()
        time.sleep(0.0005)
thread = threading.Thread(target=sample)
thread.start()
ready.wait()  # the sampler thread's own start-up (stack, first psutil call) is not the measured code's memory
before = peak[0] = proc.memory_info().rss
{measured}
done.set()
thread.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print(peak[0] - before, {reference})
"""


def peak_rss_growth(setup: str, measured: str, reference: str) -> tuple[int, float]:
    """Run `setup`, then `measured` in a fresh Python process, sampling its RSS every 0.5 ms.

    Returns (peak RSS during `measured` minus RSS before it, the value of the expression `reference`
    evaluated in that process). A fresh process keeps earlier allocations from hiding the peak; the sampler
    thread is running before the baseline RSS is read, so its start-up (about 80 kB) is not counted."""
    code = PEAK_RSS.format(benchmarks=str(BENCHMARKS), setup=setup, measured=measured, reference=reference)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])
