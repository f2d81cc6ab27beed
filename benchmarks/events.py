"""Framing and denoise vs tonic on NMNIST-sized streams (~5k events, 34x34x2); prints medians and ratios."""

import statistics
import time

import numpy as np
import tonic

from marble_nb.events import denoise, make_events, to_frames

SENSOR = (34, 34, 2)


def _median_seconds(fn, repeats=7, number=20):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    n = 5000
    ev = make_events(
        rng.integers(0, 34, n), rng.integers(0, 34, n), np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n)
    )
    ref_frame = tonic.transforms.ToFrame(sensor_size=SENSOR, n_time_bins=10)
    assert np.array_equal(ref_frame(ev.copy()), to_frames(ev, SENSOR, n_time_bins=10))
    t_ref = _median_seconds(lambda: ref_frame(ev.copy()))
    t_ours = _median_seconds(lambda: to_frames(ev, SENSOR, n_time_bins=10))
    print(f"framing  tonic {t_ref * 1e3:.3f} ms  marble_nb {t_ours * 1e3:.3f} ms  ratio {t_ref / t_ours:.1f}x")
    ref_dn = tonic.transforms.Denoise(filter_time=10_000)
    assert np.array_equal(ref_dn(ev), denoise(ev, 10_000))
    t_ref = _median_seconds(lambda: ref_dn(ev), repeats=5, number=3)
    t_ours = _median_seconds(lambda: denoise(ev, 10_000), repeats=5, number=3)
    print(f"denoise  tonic {t_ref * 1e3:.3f} ms  marble_nb {t_ours * 1e3:.3f} ms  ratio {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
