"Training features on small in-memory frames: schedulers, early stopping, clipping, accumulation, checkpoints, resume."

import importlib.util
import os
import resource

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from marble_nb.models import CNN, DiffLogicNet
from marble_nb.train import Classifier, load_checkpoint, make_loggers, make_trainer


def frames(n=96, seed=0, classes=4):
    "Separable 2-polarity 8×8 frames: class c lights a 2×2 block at (2c, 2c)."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.poisson(torch.full((n, 2, 8, 8), 0.1), generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, :, 2 * c : 2 * c + 2, 2 * c : 2 * c + 2] += 2
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def trainer(tmp_path, **kw):
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("log_every_n_steps", 1)
    kw.setdefault("max_epochs", 1)
    return make_trainer(tmp_path, **kw)


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(128, 4))


@pytest.mark.parametrize("scheduler", ["step", "cosine", "onecycle", "plateau"])
def test_schedulers_change_lr(tmp_path, scheduler):
    t = trainer(tmp_path, max_epochs=2)
    t.fit(Classifier(linear(), 4, lr=0.1, scheduler=scheduler, step_size=1, gamma=0.5), frames(), frames(seed=1))
    assert t.optimizers[0].param_groups[0]["lr"] != pytest.approx(0.1) or scheduler == "plateau"
    if scheduler == "step":
        assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)


def test_difflogic_learns(tmp_path):
    torch.manual_seed(0)
    t = trainer(tmp_path, max_epochs=4)
    model = DiffLogicNet((2, 8, 8), 4, depth=2, width=400, tau=10)
    t.fit(Classifier(model, 4, lr=0.05), frames(), frames(seed=1))
    assert t.callback_metrics["val/acc"] > 0.8


def test_early_stopping_stops(tmp_path):
    t = trainer(tmp_path, max_epochs=10, monitor="val/loss", mode="min", patience=1)
    t.fit(Classifier(linear(), 4, lr=0.0), frames(), frames(seed=1))  # lr 0: loss never improves
    assert t.current_epoch == 2


class GradNorms(Callback):
    "Record the gradient norm each optimiser step used (after clipping; the closure runs inside step)."

    def __init__(self):
        self.norms = []

    def on_train_start(self, trainer, pl_module):
        def post(opt, args, kwargs):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

        trainer.optimizers[0].register_step_post_hook(post)


def test_gradient_clipping_clips(tmp_path):
    rec = GradNorms()
    t = trainer(tmp_path, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
    t.callbacks.append(rec)
    t.fit(Classifier(linear(), 4, lr=0.1), frames())
    assert rec.norms and max(rec.norms) <= 1e-3 * 1.01


def test_accumulation_accumulates(tmp_path):
    t = trainer(tmp_path, accumulate_grad_batches=3)
    t.fit(Classifier(linear(), 4), frames())  # 6 batches
    assert t.global_step == 2


def test_bf16_mixed_precision_runs(tmp_path):
    t = trainer(tmp_path, precision="bf16-mixed")
    t.fit(Classifier(CNN((2, 8, 8), 4, widths=(4, 8)), 4), frames(), frames(seed=1))
    assert torch.isfinite(t.callback_metrics["val/loss"])


def test_top_k_keeps_k_plus_last(tmp_path):
    t = trainer(tmp_path, max_epochs=4, top_k=2, monitor="val/loss", mode="min")
    t.fit(Classifier(linear(), 4, lr=0.01), frames(), frames(seed=1))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 3 and "last.ckpt" in names
    best = load_checkpoint(tmp_path, "best")
    assert best.name in names and best.name != "last.ckpt"


def test_time_based_checkpoints(tmp_path):
    t = trainer(tmp_path, max_epochs=2, every_minutes=1e-9)
    t.fit(Classifier(linear(), 4), frames(), frames(seed=1))
    timed = list((tmp_path / "checkpoints").glob("time-*.ckpt"))
    assert len(timed) >= 2
    assert load_checkpoint(tmp_path, timed[0].stem.split("-", 3)[-1]) == timed[0]


class FirstLoss(Callback):
    "Record the loss of each training batch."

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_exact_resume(tmp_path):
    def model():
        torch.manual_seed(0)
        return Classifier(DiffLogicNet((2, 8, 8), 4, depth=2, width=200), 4, lr=0.05, scheduler="step", step_size=1)

    full = FirstLoss()
    t = trainer(tmp_path / "full", max_epochs=3)
    t.callbacks.append(full)
    t.fit(model(), frames(), frames(seed=1))

    trainer(tmp_path / "part", max_epochs=2).fit(model(), frames(), frames(seed=1))
    resumed = FirstLoss()
    t2 = trainer(tmp_path / "part", max_epochs=3)
    t2.callbacks.append(resumed)
    other = model()
    t2.fit(other, frames(), frames(seed=1), ckpt_path=load_checkpoint(tmp_path / "part", "last"))
    per_epoch = len(resumed.losses)
    assert resumed.losses == pytest.approx(full.losses[-per_epoch:], abs=0)
    assert t2.global_step == t.global_step
    wiring = torch.load(load_checkpoint(tmp_path / "part", "last"), weights_only=False)["state_dict"]
    assert "model.2.wiring" in wiring  # the logic wiring travels with the checkpoint


def test_loggers_csv_tensorboard(tmp_path):
    t = trainer(tmp_path, loggers=("csv", "tensorboard"))
    t.fit(Classifier(linear(), 4), frames(), frames(seed=1))
    assert list(tmp_path.glob("csv/version_0/metrics.csv"))
    assert list(tmp_path.glob("tensorboard/version_0/events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = trainer(tmp_path, loggers=("wandb",))
    t.fit(Classifier(linear(), 4), frames(), frames(seed=1))
    assert list(tmp_path.glob("wandb/offline-run-*"))
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ValueError, match="WANDB_MODE='sideways' is invalid"):
        make_loggers(tmp_path, ("wandb",))


def test_user_metric_logged(tmp_path):
    def top2(scores, y):
        return (scores.topk(2, -1).indices == y[:, None]).any(-1).float().mean()

    t = trainer(tmp_path)
    t.fit(Classifier(linear(), 4, metrics={"top2": top2}), frames(), frames(seed=1))
    assert "val/top2" in t.callback_metrics and t.callback_metrics["val/top2"] >= t.callback_metrics["val/acc"]


def test_confusion_matrix_counts_test_set(tmp_path):
    t = trainer(tmp_path)
    clf = Classifier(linear(), 4)
    t.fit(clf, frames())
    t.test(clf, frames(n=40, seed=2))
    assert clf.confusion.compute().sum() == 40


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_rss_does_not_grow(tmp_path):
    data = frames(n=320)
    trainer(tmp_path / "warm", max_epochs=2, loggers=()).fit(Classifier(linear(), 4), data)
    start = rss_mb()
    trainer(tmp_path / "long", max_epochs=20, loggers=()).fit(Classifier(linear(), 4), data)  # 400 steps
    assert rss_mb() - start < 30, resource.getrusage(resource.RUSAGE_SELF)
