"""EventDataModule: worker errors name the sample and stop the workers; splits; shuffling and augmentation per epoch
(one process, DDP ranks, worker processes)."""

from pathlib import Path

import psutil
import pytest
import torch

from marble_nb.augment import Augment
from marble_nb.datamodule import EpochShuffleSampler, EventDataModule
from marble_nb.datasets import event_dataset, write_fixture
from marble_nb.events import FrameConfig, frame_events


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


def test_without_official_split_test_never_overlaps_training(tmp_path):
    write_fixture("cifar10dvs", tmp_path, per_class=10, n_events=40)
    dm = EventDataModule("cifar10dvs", tmp_path, FrameConfig(n_time_bins=1), batch_size=4, val_fraction=0.2)
    dm.setup()
    files = {split: {dm.splits[split].dataset.files[i] for i in dm.splits[split].indices} for split in ("train", "val")}
    files["test"] = set(dm.splits["test"].files)
    assert (len(files["train"]), len(files["val"]), len(files["test"])) == (72, 18, 10)
    assert not files["test"] & (files["train"] | files["val"]) and not files["train"] & files["val"]
    assert sorted(y for _, y in dm.test_dataloader().dataset) == list(range(10))  # one recording per class


def _ddp_loaders(dm, world_size):
    """The training loader of each rank as Lightning's trainer builds it under DDP: the data module's loader,
    re-instantiated with the distributed sampler Lightning chooses for it."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        single = dm.train_dataloader()
    loaders = []
    for rank in range(world_size):
        sampler = _get_distributed_sampler(
            single, _is_dataloader_shuffled(single), 0, RunningStage.TRAINING, num_replicas=world_size, rank=rank
        )
        loaders.append(_update_dataloader(single, sampler, mode=RunningStage.TRAINING))
    return loaders


def test_ddp_ranks_share_each_epochs_order_and_augmentation(tmp_path):
    """Under DDP, Lightning wraps the sampler and calls set_epoch on the wrapper: each rank must get its share of
    the very order (and augmentation) one process would use in that epoch, and the order must change with it."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    aug = Augment((("translate", {"max_shift": 2}),), seed=5)
    dm = EventDataModule("nmnist", _fixture(tmp_path), FrameConfig(n_time_bins=1), augment=aug, batch_size=4, seed=7)
    dm.setup()
    train = dm.splits["train"]
    raw = event_dataset("nmnist", tmp_path, "train")
    orders = []
    for epoch in (0, 2):
        order = list(EpochShuffleSampler(len(train), seed=7, epoch=epoch))
        orders.append(order)
        for rank, loader in enumerate(_ddp_loaders(dm, world_size=2)):
            _set_sampler_epoch(loader, epoch)  # what the fit loop does at every epoch start
            share = order[rank::2]
            assert list(loader.sampler) == share
            x, _ = next(iter(loader))
            for row, index in zip(x, share[:4], strict=True):
                events, _ = raw[train.indices[index]]
                expected = frame_events(aug(events, raw.sensor_size, train.indices[index], epoch), raw.sensor_size)
                assert torch.equal(row, torch.as_tensor(expected, dtype=torch.float32))
    assert orders[0] != orders[1]


def test_augmentation_epoch_reaches_the_workers(tmp_path):
    """set_epoch runs before the loader starts its worker processes, which copy the dataset then."""
    aug = Augment((("translate", {"max_shift": 3}), ("drop_events", {"p": 0.3})), seed=1)
    dm = EventDataModule(
        "nmnist", _fixture(tmp_path), FrameConfig(n_time_bins=1), augment=aug, batch_size=4, num_workers=2
    )
    dm.setup()
    loader = dm.train_dataloader()
    raw, train = event_dataset("nmnist", tmp_path, "train"), dm.splits["train"]
    for epoch in (3, 4):
        loader.sampler.set_epoch(epoch)
        x, _ = next(iter(loader))
        index = train.indices[next(iter(loader.sampler))]
        events, _ = raw[index]
        expected = frame_events(aug(events, raw.sensor_size, index, epoch), raw.sensor_size)
        assert torch.equal(x[0], torch.as_tensor(expected, dtype=torch.float32))
