"""Each tonic reader runs for real through `event_dataset` on tiny files written in the dataset's own format."""

import os
from unittest import mock

import numpy as np
import pytest
import tonic

from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import event_dataset, write_fixture, write_nmnist_bin
from marble_nb.events import FrameConfig, make_events, to_frames


def _written_for(name, files, dataset):
    """The events written for each sample of `dataset`, in the dataset's order (matched by file path)."""
    by_path = {str(path).replace("\\", "/"): events for path, events in files.items()}
    return [next(ev for rel, ev in by_path.items() if path.endswith(rel)) for path in dataset.data]


@pytest.mark.parametrize(
    "name, split, n_files, sensor",
    [
        ("nmnist", "train", 20, (34, 34, 2)),
        ("nmnist", "test", 20, (34, 34, 2)),
        ("ncaltech101", "all", 6, (240, 180, 2)),
        ("dvsgesture", "train", 22, (128, 128, 2)),
        ("dvsgesture", "test", 22, (128, 128, 2)),
        ("cifar10dvs", "all", 20, (128, 128, 2)),
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
    expected = {"nmnist": 10, "dvsgesture": 11, "cifar10dvs": 10, "ncaltech101": 3}
    assert labels == list(range(expected[name]))
    if name == "ncaltech101":  # class indices into the sorted folder names
        assert ds.classes == ["accordion", "airplanes", "anchor"]
        assert [ds.classes[t] for t in ds.targets] == [path.split("/")[-2] for path in ds.data]


@pytest.mark.parametrize("name, n_classes", [("cifar10dvs", 10), ("ncaltech101", 3)])
def test_split_without_official_one_is_disjoint_stratified_and_deterministic(tmp_path, name, n_classes):
    """10 % of each class to test (at least one), never in train; the same files whatever the listing order."""
    write_fixture(name, tmp_path / "a", per_class=12, n_events=20, seed=1)
    train, test, everything = (event_dataset(name, tmp_path / "a", s) for s in ("train", "test", "all"))
    assert not set(train.data) & set(test.data)
    assert sorted(train.data + test.data) == sorted(everything.data)
    assert np.bincount(test.targets).tolist() == [1] * n_classes  # 12 // 10 per class
    assert np.bincount(train.targets).tolist() == [11] * n_classes
    for index in range(len(test)):  # each sample is read from its own file with its own class
        events, target = test[index]
        assert target == test.targets[index] and len(events) == 20
    # the same files written again elsewhere, and listed in reverse order by the file system walk: same split
    write_fixture(name, tmp_path / "b", per_class=12, n_events=20, seed=2)
    real_walk = os.walk
    with mock.patch("os.walk", lambda top, **kw: ((p, d, f[::-1]) for p, d, f in real_walk(top, **kw))):
        again = event_dataset(name, tmp_path / "b", "test")
    assert [os.path.relpath(p, tmp_path / "b") for p in again.data] == [
        os.path.relpath(p, tmp_path / "a") for p in test.data
    ]
    with pytest.raises(ValueError, match="split must be one of"):
        event_dataset(name, tmp_path / "a", "val")


def test_ncaltech101_events_beyond_the_fixed_sensor_are_dropped(tmp_path):
    """tonic moves the smallest x, y to 0; what lies beyond 240 x 180 after that is cropped, before any transform."""
    path = tmp_path / "NCALTECH101" / "Caltech101" / "anchor" / "image_0001.bin"
    write_nmnist_bin(path, make_events([3, 250, 120, 10], [5, 20, 186, 40], [0, 10, 20, 30], [1, 0, 1, 0]))
    seen = []
    ds = event_dataset("ncaltech101", tmp_path, "all", transform=lambda ev: seen.append(len(ev)) or ev)
    events, label = ds[0]
    assert (events["x"].tolist(), events["y"].tolist(), label) == ([0, 7], [0, 35], 0)  # (250, 20), (120, 186) cropped
    assert seen == [2]
    frames = to_frames(events, ds.sensor_size, n_time_bins=1)
    assert frames.shape == (1, 2, 180, 240)


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
