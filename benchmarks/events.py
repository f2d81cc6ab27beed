"""Event data vs tonic, ratios measured in this run (medians of repeats):

- framing vs tonic.transforms.ToFrame and denoise vs tonic.transforms.Denoise on NMNIST-sized streams
  (5k events, 34x34x2), outputs checked equal; goal >= 10x each;
- N-Digits generation time (goal <= 60 s on 2 cores);
- one epoch of cached N-Digits through EventDataModule vs the same frames through tonic.DiskCachedDataset
  and a DataLoader (both warm, same batches of float32 binary frames); goal >= 5x.
"""

import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import tonic
import torch
from _measure import median_time, median_times
from torch.utils.data import DataLoader

from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import event_dataset, make_ndigits
from marble_nb.events import FrameConfig, binarize, denoise, make_events, to_frames

SENSOR = (34, 34, 2)


def _per_call(fns, number, repeats=15):
    """Median seconds per call of each of `fns`, timing `number` calls at a time, the functions taking turns
    (so that a change of load on the shared cores during the run slows baseline and candidate alike)."""
    rounds = [lambda fn=fn: [fn() for _ in range(number)] for fn in fns]
    return [t / number for t in median_times(rounds, repeats=repeats)]


def _report(name, t_ref, t_ours):
    print(
        f"{name}  tonic {t_ref * 1e3:.3f} ms  marble_nb {t_ours * 1e3:.3f} ms  ratio {t_ref / t_ours:.1f}x (goal >= 10)"
    )


def bench_framing_and_denoise():
    rng = np.random.default_rng(0)
    n = 5000
    ev = make_events(
        rng.integers(0, 34, n), rng.integers(0, 34, n), np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n)
    )
    ref_frame = tonic.transforms.ToFrame(sensor_size=SENSOR, n_time_bins=10)
    assert np.array_equal(ref_frame(ev), to_frames(ev, SENSOR, n_time_bins=10))
    # with two polarities tonic leaves its input alone: no copy needed
    t_ref, t_ours = _per_call([lambda: ref_frame(ev), lambda: to_frames(ev, SENSOR, n_time_bins=10)], 20, repeats=41)
    _report("framing", t_ref, t_ours)
    ref_dn = tonic.transforms.Denoise(filter_time=10_000)
    assert np.array_equal(ref_dn(ev), denoise(ev, 10_000))
    t_ref, t_ours = _per_call([lambda: ref_dn(ev), lambda: denoise(ev, 10_000)], 3, repeats=7)
    _report("denoise", t_ref, t_ours)


def bench_generation(root: Path) -> None:
    start = time.perf_counter()
    make_ndigits(root, progress=False)
    print(f"N-Digits generation  {time.perf_counter() - start:.1f} s for 1797 samples (goal <= 60 s)")


def _epoch(loader) -> int:
    """Iterate one epoch as a training loop would receive it: float32 batches; returns the number of samples."""
    seen = 0
    for x, _ in loader:
        seen += len(x.float())
    return seen


def bench_cached_epoch(root: Path, scratch: Path) -> None:
    framing = FrameConfig(n_time_bins=3, encoding="binary")
    dm = EventDataModule("ndigits", root, framing, batch_size=64, val_fraction=0.0, cache_dir=scratch / "frames")
    dm.setup()
    transform = tonic.transforms.Compose(
        [tonic.transforms.ToFrame(sensor_size=SENSOR, n_time_bins=3), functools.partial(binarize, threshold=1)]
    )
    reader = event_dataset("ndigits", root, "train", transform=transform)
    cached = tonic.DiskCachedDataset(reader, cache_path=str(scratch / "tonic"))
    tonic_loader = DataLoader(cached, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    ours_loader = dm.train_dataloader()
    for i in (0, 700, len(reader) - 1):  # same frames on both sides
        assert np.array_equal(cached[i][0], dm.splits["train"].dataset[i][0].numpy().astype(np.uint8))
    assert _epoch(tonic_loader) == _epoch(ours_loader) == len(reader)  # warm-up: fills tonic's cache
    t_ref, t_ours = median_time(lambda: _epoch(tonic_loader), repeats=3), median_time(lambda: _epoch(ours_loader))
    print(
        f"cached epoch ({len(reader)} samples, batch 64)  tonic DiskCachedDataset {t_ref:.3f} s  "
        f"EventDataModule {t_ours:.3f} s  ratio {t_ref / t_ours:.1f}x (goal >= 5)"
    )


def main():
    bench_framing_and_denoise()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        bench_generation(scratch / "data")
        bench_cached_epoch(scratch / "data", scratch)


if __name__ == "__main__":
    main()
