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
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


PEAK_RSS = """
import sys, threading, time, psutil
sys.path.insert(0, {benchmarks!r})
{setup}
proc, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.0005)
before = proc.memory_info().rss
thread = threading.Thread(target=sample)
thread.start()
{measured}
done.set()
thread.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print(peak[0] - before, {reference})
"""


def peak_rss_growth(setup: str, measured: str, reference: str) -> tuple[int, float]:
    """Run `setup`, then `measured` in a fresh Python process, sampling its RSS every 0.5 ms.

    Returns (peak RSS during `measured` minus RSS before it, the value of the expression `reference`
    evaluated in that process). A fresh process keeps earlier allocations from hiding the peak."""
    code = PEAK_RSS.format(benchmarks=str(BENCHMARKS), setup=setup, measured=measured, reference=reference)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])
