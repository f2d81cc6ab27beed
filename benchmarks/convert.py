"""Conversion cost against PyTorch baselines measured in the same run (issue 5).

Prints a table of ratios:
  - convert_model (compact graph) time / torch.save(state_dict) time        goal <= 5
  - dry-run time / one forward pass at batch 1                               goal <= 3
  - peak extra memory of a conversion / parameter bytes                      goal <= 1.5
for an MLP 784-512-512-10, a small CNN and a ResNet-18-shaped network (full width 64).
Peak memory is measured in a fresh process (RSS sampled during the conversion, which includes ShapeProp's
forward pass, minus RSS before) so that earlier work does not hide it.
"""

import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_convert import randomise_batchnorm, resnet18_shaped  # noqa: E402

from marble_nb.convert import convert_model  # noqa: E402

REPEATS = 7


def make_network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    "One benchmark network (eval mode) and its per-sample input shape."
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        ).eval(), (784,)
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1352, 10)
        ).eval(), (
            1,
            28,
            28,
        )
    return randomise_batchnorm(resnet18_shaped(width=64, classes=1000)), (3, 64, 64)


NETWORKS = ("mlp", "cnn", "resnet18")


def median_time(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_extra_bytes(name: str) -> tuple[int, int]:
    "Convert in a fresh process, sampling its RSS; returns (peak RSS growth during conversion, parameter bytes)."
    code = f"""
import sys, threading, time, psutil, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from convert import make_network
from marble_nb.convert import convert_model, load_builtin_converters
load_builtin_converters()
warm = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
convert_model(warm, torch.randn(1, 1, 4, 4))
model, shape = make_network({name!r})  # after a warm-up conversion: one-time costs (imports, caches) excluded
x = torch.randn(1, *shape)
proc, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.0005)
before = proc.memory_info().rss
thread = threading.Thread(target=sample)
thread.start()
graph = convert_model(model, x)
done.set()
thread.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print(peak[0] - before, sum(p.numel() * p.element_size() for p in model.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    rows = []
    for name in NETWORKS:
        model, shape = make_network(name)
        x = torch.randn(1, *shape)
        t_save = median_time(lambda m=model: torch.save(m.state_dict(), io.BytesIO()))
        t_convert = median_time(lambda m=model, x=x: convert_model(m, x))
        with torch.no_grad():
            t_forward = median_time(lambda m=model, x=x: m(x))
        t_dry = median_time(lambda m=model, x=x: convert_model(m, x, dry_run=True))
        extra, params = peak_extra_bytes(name)
        rows.append((name, t_convert / t_save, t_dry / t_forward, extra / params, t_convert, t_save, t_dry, t_forward))
    print(
        f"{'network':10s} {'convert/save':>13s} {'dry-run/fwd':>12s} {'peak mem/params':>16s}   (medians of {REPEATS})"
    )
    for name, r1, r2, r3, *_ in rows:
        print(f"{name:10s} {r1:13.2f} {r2:12.2f} {r3:16.2f}")
    print(f"{'goal':10s} {'<= 5':>13s} {'<= 3':>12s} {'<= 1.5':>16s}")
    for name, *_, tc, ts, td, tf in rows:
        times = f"convert {tc * 1e3:.1f} ms, torch.save {ts * 1e3:.1f} ms, dry run {td * 1e3:.1f} ms"
        print(f"  {name}: {times}, forward {tf * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
