"""N-Digits end to end: NMNIST layout read by tonic, NMNIST-like statistics, determinism, interruption, learnability."""

import hashlib
import json

import numpy as np
import pytest
import torch

import marble_nb.datasets as datasets
from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import NDigitsConfig, event_dataset, make_ndigits
from marble_nb.events import FrameConfig
from marble_nb.stats import event_stats


@pytest.fixture(scope="module")
def ndigits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_ndigits(root, progress=False)
    return root


def _tree_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.bin")):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_layout_and_reader(ndigits_root):
    folder = ndigits_root / "NDigits"
    assert len(list((folder / "Train").glob("*/*.bin"))) == 1437 and len(list((folder / "Test").glob("*/*.bin"))) == 360
    assert json.loads((folder / "ndigits.json").read_text())["key"] == NDigitsConfig().key()
    train, test = event_dataset("ndigits", ndigits_root, "train"), event_dataset("ndigits", ndigits_root, "test")
    assert type(train).__mro__[1].__name__ == "NMNIST" and train.sensor_size == (34, 34, 2)
    assert (len(train), len(test)) == (1437, 360) and sorted(set(test.targets)) == list(range(10))
    events, label = test[0]
    assert label == 0 and (np.diff(events["t"]) >= 0).all() and events["x"].max() < 34 and events["y"].max() < 34


def test_statistics_look_like_nmnist(ndigits_root):
    stats = event_stats(event_dataset("ndigits", ndigits_root, "train"), progress=False)
    assert 3000 <= stats.n_events.mean() <= 5500  # NMNIST: a few thousand events per sample
    assert 280_000 <= np.median(stats.duration_us) <= 300_000  # three saccades of 100 ms
    assert 0.4 <= stats.on_fraction.mean() <= 0.6
    assert stats.heatmap.sum(axis=0).min() > 0  # noise reaches every pixel; the digit covers the middle
    assert all(row["samples"] >= 130 for row in stats.table()[:-1])


def test_deterministic_and_independent_of_chunking(ndigits_root, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SIM_CHUNK", 50)
    again = make_ndigits(tmp_path, progress=False)
    assert _tree_digest(again) == _tree_digest(ndigits_root / "NDigits")


def test_interrupted_generation_leaves_previous_copy_or_nothing(ndigits_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_encode = datasets.encode_nmnist

    def interrupted(events):
        calls["n"] += 1
        if calls["n"] == 500:
            raise KeyboardInterrupt
        return real_encode(events)

    monkeypatch.setattr(datasets, "encode_nmnist", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_ndigits(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder
    before = _tree_digest(ndigits_root / "NDigits")
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        make_ndigits(ndigits_root, progress=False, force=True)
    assert not [p.name for p in ndigits_root.iterdir() if p.name.startswith(".")]  # staging removed
    assert _tree_digest(ndigits_root / "NDigits") == before


def _linear_probe_accuracy(root, framing):
    """Test accuracy of a logistic regression on the frames (full-batch AdamW, fixed seed)."""
    dm = EventDataModule("ndigits", root, framing, val_fraction=0.0, batch_size=4096)
    dm.setup()
    (x_train, y_train), (x_test, y_test) = (
        next(iter(loader())) for loader in (dm.train_dataloader, dm.test_dataloader)
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(x_train[0].numel(), 10)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train.flatten(1)), y_train).backward()
        optimiser.step()
    with torch.no_grad():
        return (model(x_test.flatten(1)).argmax(1) == y_test).float().mean().item()


@pytest.mark.parametrize(
    "framing, at_least",
    [
        (FrameConfig(n_time_bins=3, encoding="binary"), 0.95),  # one binary frame per saccade
        (FrameConfig(n_time_bins=1, encoding="binary", threshold=2), 0.92),  # one frame, pixels with >= 2 events
    ],
)
def test_classes_stay_learnable(ndigits_root, framing, at_least):
    accuracy = _linear_probe_accuracy(ndigits_root, framing)
    print(f"N-Digits linear probe, {framing}: test accuracy {accuracy:.3f}")
    assert accuracy >= at_least
