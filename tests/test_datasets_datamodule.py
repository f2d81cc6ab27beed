"""EventDataModule with workers: a failing sample names its index and file, and no worker process survives."""

from pathlib import Path

import psutil
import pytest

from marble_nb.augment import Augment
from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import event_dataset, write_fixture
from marble_nb.events import FrameConfig


def _fixture(root: Path) -> Path:
    write_fixture("nmnist", root, per_class=2, n_events=40)
    return root


def test_nmnist_reader_reads_fixture(tmp_path):
    ds = event_dataset("nmnist", _fixture(tmp_path), "test")
    assert len(ds) == 20 and sorted(set(ds.targets)) == list(range(10))
    assert len(ds[0][0]) == 40


def test_worker_error_names_sample_and_leaves_no_worker(tmp_path):
    root = _fixture(tmp_path)
    bad = Augment((("translate", {"max_shift": -5}),))  # negative range makes rng.integers raise in the worker
    dm = EventDataModule("nmnist", root, FrameConfig(n_time_bins=1), augment=bad, batch_size=4, num_workers=2)
    dm.setup()
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    with pytest.raises(Exception) as info:
        for _ in dm.train_dataloader():
            pass
    message = str(info.value)
    assert "sample" in message and ".bin" in message and "NMNIST" in message
    # `info` still holds the traceback (and so the iterator): the workers must be gone all the same,
    # at once, not when the iterator is garbage collected
    left = {c.pid for c in me.children(recursive=True)} - before
    assert not left, f"worker processes left behind: {sorted(left)}"


def test_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="DVSGesture/"):
        event_dataset("dvsgesture", tmp_path, "train")
