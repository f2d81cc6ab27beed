"Resuming on N-Digits: exact continuation (RNG included), changed LR settings and length, incompatible settings."

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from marble_nb.datamodule import EventDataModule
from marble_nb.datasets import write_nmnist_bin
from marble_nb.events import FrameConfig, make_events
from marble_nb.models import MLP
from marble_nb.train import Classifier, load_checkpoint, make_trainer

FRAMING = FrameConfig(n_time_bins=1, encoding="binary")
SHAPE = (1, 2, 34, 34)


def ndigits(**kw):
    return EventDataModule("ndigits", **(dict(framing=FRAMING, batch_size=32) | kw))


def trainer(run, **kw):
    kw = dict(max_epochs=1, limit_train_batches=3, limit_val_batches=1, enable_progress_bar=False, loggers=()) | kw
    return make_trainer(run, **kw)


def mlp(hidden=(64,), **kw):
    torch.manual_seed(0)
    return Classifier(MLP(SHAPE, 10, hidden=hidden, dropout=0.3), 10, **kw)


class Record(Callback):
    "Loss of every training batch and the learning rate each epoch trained with."

    def __init__(self):
        self.losses, self.lrs = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def resume(run, clf, data, **kw):
    rec = Record()
    t = trainer(run, callbacks=[rec], **kw)
    t.fit(clf, data, ckpt_path=load_checkpoint(run, "last"))
    return t, rec


def test_resume_continues_exactly_with_dropout(tmp_path):
    "Dropout draws from the global RNG: identical next-batch losses need the RNG state from the checkpoint."
    dm = ndigits()
    dm.setup()
    in_order = DataLoader(dm.splits["train"], batch_size=32)  # real N-Digits frames, no shuffling
    val = dm.val_dataloader()
    full = Record()
    trainer(tmp_path / "full", max_epochs=3, callbacks=[full]).fit(mlp(), in_order, val)
    trainer(tmp_path / "part", max_epochs=2).fit(mlp(), in_order, val)
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter
    rec = Record()
    t = trainer(tmp_path / "part", max_epochs=3, callbacks=[rec])
    t.fit(mlp(), in_order, val, ckpt_path=load_checkpoint(tmp_path / "part", "last"))
    assert t.global_step == 9
    assert rec.losses == full.losses[-3:]


def test_resume_continues_exactly_with_datamodule_shuffling(tmp_path):
    "EventDataModule's sampler draws epoch e's order from (seed, e): the resumed epoch 2 sees the same batches."
    full = Record()
    trainer(tmp_path / "full", max_epochs=3, callbacks=[full]).fit(mlp(), ndigits())
    trainer(tmp_path / "part", max_epochs=2).fit(mlp(), ndigits())
    t, rec = resume(tmp_path / "part", mlp(), ndigits(), max_epochs=3)
    assert rec.losses == full.losses[-3:]


def test_longer_cosine_schedule_is_rebuilt(tmp_path):
    "max_epochs 2 → 4: the cosine schedule anneals over 4 epochs, not restarting the 2-epoch one."
    trainer(tmp_path, max_epochs=2).fit(mlp(lr=0.01, scheduler="cosine"), ndigits())
    t, rec = resume(tmp_path, mlp(lr=0.01, scheduler="cosine"), ndigits(), max_epochs=4)
    expected = [0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)]
    assert rec.lrs == pytest.approx(expected, rel=1e-6)
    assert t.lr_scheduler_configs[0].scheduler.T_max == 4


def test_longer_onecycle_schedule_is_rebuilt(tmp_path):
    "One-cycle counts optimiser steps; resuming a longer run would otherwise step past its end and raise."
    trainer(tmp_path, max_epochs=1).fit(mlp(lr=0.01, scheduler="onecycle"), ndigits())
    t, rec = resume(tmp_path, mlp(lr=0.01, scheduler="onecycle"), ndigits(), max_epochs=2)
    assert t.global_step == 6
    reference = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([torch.zeros(1)], lr=0.01), 0.01, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(reference.get_last_lr()[0])
        reference.step()
    assert rec.lrs == pytest.approx([lrs[3]], rel=1e-6)
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0], rel=1e-6)


def test_changed_lr_settings_and_batch_size_apply(tmp_path):
    trainer(tmp_path, max_epochs=2).fit(mlp(lr=0.01, scheduler="step", step_size=1, gamma=0.5), ndigits())
    clf = mlp(lr=0.02, scheduler="step", step_size=1, gamma=0.1, weight_decay=0.01)
    t, rec = resume(tmp_path, clf, ndigits(batch_size=16), max_epochs=3)
    assert rec.lrs == pytest.approx([0.02 * 0.1**2])
    assert t.optimizers[0].param_groups[0]["weight_decay"] == 0.01
    assert t.global_step == 9


def test_wider_model_is_refused_listing_keys(tmp_path):
    trainer(tmp_path).fit(mlp(hidden=(64,)), ndigits())
    with pytest.raises(ValueError) as info:
        resume(tmp_path, mlp(hidden=(128,)), ndigits(), max_epochs=2)
    message = str(info.value)
    assert "model.model.1.weight: [64, 2312] in the checkpoint, [128, 2312] now" in message
    assert "model.model.4.weight: [10, 64] in the checkpoint, [10, 128] now" in message
    assert "model.lr" in message.split("may change:")[1]  # and says what may change


def _nmnist(root):
    g = torch.Generator().manual_seed(0)
    for split in ("Train", "Test"):
        for digit in range(10):
            n = 30
            xy = torch.randint(0, 34, (2, n), generator=g)
            t = torch.randint(0, 9000, (n,), generator=g).sort().values
            events = make_events(
                xy[0].numpy(), xy[1].numpy(), t.numpy(), torch.randint(0, 2, (n,), generator=g).numpy()
            )
            write_nmnist_bin(root / "NMNIST" / split / str(digit) / "00000.bin", events)
    return root


def test_other_dataset_and_framing_are_refused(tmp_path):
    trainer(tmp_path / "run").fit(mlp(), ndigits())
    other = EventDataModule(
        "nmnist", _nmnist(tmp_path / "data"), FrameConfig(n_time_bins=1, encoding="polarity"), batch_size=4
    )
    t = trainer(tmp_path / "run", max_epochs=2)
    with pytest.raises(ValueError) as info:
        t.fit(mlp(), other, ckpt_path=load_checkpoint(tmp_path / "run", "last"))
    lines = str(info.value).splitlines()
    assert "  data.dataset: 'ndigits' in the checkpoint, 'nmnist' now" in lines
    assert "  data.framing.encoding: 'binary' in the checkpoint, 'polarity' now" in lines
    assert not any(line.startswith(("  data.root", "  data.batch_size")) for line in lines)  # those may change
    assert t.global_step == 0
