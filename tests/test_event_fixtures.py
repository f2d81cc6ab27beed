"""Each tonic reader runs for real through `event_dataset` on tiny files written in the dataset's own format."""

import numpy as np
import pytest
import tonic

from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import event_dataset, write_fixture
from marble_nb.events import FrameConfig, to_frames


def _written_for(name, files, dataset):
    """The events written for each sample of `dataset`, in the dataset's order (matched by file path)."""
    by_path = {str(path).replace("\\", "/"): events for path, events in files.items()}
    return [next(ev for rel, ev in by_path.items() if path.endswith(rel)) for path in dataset.data]


@pytest.mark.parametrize(
    "name, split, n_files, sensor",
    [
        ("nmnist", "train", 20, (34, 34, 2)),
        ("nmnist", "test", 20, (34, 34, 2)),
        ("ncaltech101", "train", 6, None),
        ("dvsgesture", "train", 22, (128, 128, 2)),
        ("dvsgesture", "test", 22, (128, 128, 2)),
        ("cifar10dvs", "train", 20, (128, 128, 2)),
    ],
)
def test_reader_reads_fixture(tmp_path, name, split, n_files, sensor):
    files = write_fixture(name, tmp_path, per_class=2, n_events=60, seed=3)
    ds = event_dataset(name, tmp_path, split)
    assert type(ds).__mro__[1].__module__.startswith("tonic.datasets")  # the real tonic reader class
    assert len(ds) == n_files
    assert ds.sensor_size == sensor
    for index, written in enumerate(_written_for(name, files, ds)):
        events, target = ds[index]
        assert len(events) == len(written)
        np.testing.assert_array_equal(events["t"].astype(np.int64), written["t"])
        np.testing.assert_array_equal(events["p"].astype(np.int64), written["p"])
        offset = (written["x"].min(), written["y"].min()) if name == "ncaltech101" else (0, 0)  # tonic re-origins
        np.testing.assert_array_equal(events["x"].astype(np.int64), written["x"] - offset[0])
        np.testing.assert_array_equal(events["y"].astype(np.int64), written["y"] - offset[1])
    labels = sorted(set(ds.targets))
    expected = {"nmnist": list(range(10)), "dvsgesture": list(range(11)), "cifar10dvs": list(range(10))}
    assert labels == expected.get(name, ["accordion", "airplanes", "anchor"])


@pytest.mark.parametrize("name", ["dvsgesture", "cifar10dvs"])
def test_framing_equals_tonic_on_reader_dtypes(tmp_path, name):
    """DVS-Gesture (int16/bool fields) and CIFAR10-DVS (uint64/uint16/bool) frame exactly like tonic's ToFrame."""
    write_fixture(name, tmp_path, per_class=1, n_events=400, seed=5)
    ds = event_dataset(name, tmp_path, "train")
    for index in range(3):
        events, _ = ds[index]
        for mode in (dict(n_time_bins=4), dict(event_count=50, overlap=10), dict(time_window=20_000.0)):
            expected = tonic.transforms.ToFrame(sensor_size=ds.sensor_size, **mode)(events.copy())
            np.testing.assert_array_equal(to_frames(events, ds.sensor_size, **mode), expected)


def test_datamodule_on_dvsgesture_fixture(tmp_path):
    write_fixture("dvsgesture", tmp_path, per_class=2, n_events=80)
    dm = EventDataModule("dvsgesture", tmp_path, FrameConfig(n_time_bins=2, encoding="binary"), batch_size=4)
    dm.setup()
    assert (len(dm.splits["train"]), len(dm.splits["val"]), len(dm.splits["test"])) == (20, 2, 22)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 2, 2, 128, 128) and set(y.tolist()) <= set(range(11))
    assert set(np.unique(x.numpy())) <= {0.0, 1.0} and x.sum() > 0
