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
