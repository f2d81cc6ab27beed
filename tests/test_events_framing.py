"""Property tests: marble_nb framing and denoise equal tonic on random streams, incl. empty and single events."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marble_nb.events import denoise, make_events, to_frames

tonic = pytest.importorskip("tonic")
SENSOR = (9, 7, 2)


@st.composite
def streams(draw, min_size=1):
    n = draw(st.integers(min_size, 60))
    x = draw(st.lists(st.integers(0, SENSOR[0] - 1), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, SENSOR[1] - 1), min_size=n, max_size=n))
    t = sorted(draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n)))
    p = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return make_events(x, y, t, p)


MODES = st.one_of(
    st.builds(lambda w, o: dict(time_window=w, overlap=min(o, w - 1)), st.integers(1, 3000), st.integers(0, 500)),
    st.builds(  # float windows: the window bounds fall between integer timestamps
        lambda w, o, s: dict(time_window=w, overlap=o * w, start_time=s),
        st.floats(0.5, 3000),
        st.sampled_from([0.0, 0.3]),
        st.one_of(st.none(), st.floats(-100, 2000)),
    ),
    st.builds(
        lambda c, o, inc: dict(event_count=c, overlap=min(o, c - 1), include_incomplete=inc),
        st.integers(1, 40),
        st.integers(0, 5),
        st.booleans(),
    ),
    st.builds(lambda b, o: dict(n_time_bins=b, overlap=o), st.integers(1, 8), st.sampled_from([0.0, 0.1, 0.5])),
    st.builds(lambda b, o: dict(n_event_bins=b, overlap=o), st.integers(1, 8), st.sampled_from([0.0, 0.25])),
)


@settings(max_examples=300, deadline=None)
@given(streams(), MODES)
def test_to_frames_equals_tonic(events, mode):
    ref = tonic.transforms.ToFrame(sensor_size=SENSOR, **mode)(events.copy())
    ours = to_frames(events, SENSOR, **mode)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


# the field types of tonic's readers: NMNIST/N-Caltech101 int64, DVS-Gesture int16 + bool, CIFAR10-DVS uint64 times
READER_DTYPES = [
    np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")]),
    np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")]),
]


def _with_field_types(events: np.ndarray, dtype: np.dtype) -> np.ndarray:
    "`events` copied into `dtype`, field by field (astype would assign structured fields by position)."
    typed = np.empty(len(events), dtype)
    for name in "xytp":
        typed[name] = events[name]
    return typed


def _tonic_wraps_around(typed: np.ndarray, mode: dict) -> bool:
    """tonic computes `duration - time_window` in the times' own dtype: for uint64 times and an integer window longer
    than the recording it wraps around to about 2**64 slices (it then returns no frames or runs out of memory)."""
    window = mode.get("time_window")
    return typed.dtype["t"] == np.uint64 and isinstance(window, int) and int(typed["t"][-1] - typed["t"][0]) < window


@settings(max_examples=150, deadline=None)
@given(streams(), MODES, st.sampled_from(READER_DTYPES))
def test_to_frames_equals_tonic_on_reader_dtypes(events, mode, dtype):
    """Equal to tonic for the field types its readers produce; where tonic's uint64 arithmetic wraps around, equal to
    what tonic gives for the same stream with signed times."""
    typed = _with_field_types(events, dtype)
    ours = to_frames(typed, SENSOR, **mode)
    signed = np.dtype([(name, "<i8" if name == "t" else dtype[name]) for name in dtype.names])
    reference = _with_field_types(events, signed) if _tonic_wraps_around(typed, mode) else typed.copy()
    ref = tonic.transforms.ToFrame(sensor_size=SENSOR, **mode)(reference)
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


def test_events_outside_the_sensor_are_refused():
    with pytest.raises(ValueError, match="outside sensor_size"):
        to_frames(make_events([1, 9], [0, 6], [0, 5], [1, 1]), SENSOR, event_count=2)


@given(MODES)
def test_to_frames_single_and_empty(mode):
    one = make_events([3], [2], [100], [1])
    np.testing.assert_array_equal(
        to_frames(one, SENSOR, **mode), tonic.transforms.ToFrame(sensor_size=SENSOR, **mode)(one.copy())
    )
    empty = to_frames(one[:0], SENSOR, **mode)
    assert empty.dtype == np.int16 and empty.shape[1:] == (2, 7, 9) and empty.sum() == 0


@settings(max_examples=200, deadline=None)
@given(streams(), st.integers(1, 3000))
def test_denoise_equals_tonic(events, filter_time):
    np.testing.assert_array_equal(
        denoise(events, filter_time), tonic.transforms.Denoise(filter_time=filter_time)(events)
    )


def test_denoise_empty():
    assert len(denoise(make_events([], [], [], []))) == 0
