"Training features on small in-memory frames: schedulers, early stopping, clipping, accumulation, checkpoints, resume."

import math
import os
import resource

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from marble_nb.models import CNN, DiffLogicNet
from marble_nb.train import Classifier, LivePlot, export_onnx, load_checkpoint, make_loggers, make_trainer


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


class StepLRs(Callback):
    "The learning rate of every optimiser step."

    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def lrs_of(tmp_path, **kw):
    rec = StepLRs()
    t = trainer(tmp_path, max_epochs=3, callbacks=[rec])
    t.fit(Classifier(linear(), 4, step_size=1, gamma=0.5, **kw), frames(), frames(seed=1))  # 6 steps per epoch
    return rec.lrs


def test_step_scheduler_steps_each_epoch(tmp_path):
    assert lrs_of(tmp_path, lr=0.1, scheduler="step") == pytest.approx([0.1] * 6 + [0.05] * 6 + [0.025] * 6)


def test_cosine_scheduler_anneals_over_max_epochs(tmp_path):
    lrs = lrs_of(tmp_path, lr=0.1, scheduler="cosine")
    assert lrs[::6] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])


def test_onecycle_scheduler_steps_each_batch(tmp_path):
    lrs = lrs_of(tmp_path, lr=0.1, scheduler="onecycle")
    assert len(set(lrs)) == 18  # a new rate every step
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and 0 < peak < 17 and lrs[-1] < lrs[0] < 0.1 / 10


def test_plateau_scheduler_reduces_when_stuck(tmp_path):
    lrs = lrs_of(tmp_path, lr=1e-12, scheduler="plateau")  # val/loss cannot improve at this rate
    assert lrs[::6] == pytest.approx([1e-12, 0.5e-12, 0.25e-12])


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


def test_gradient_value_clipping_clips(tmp_path):
    largest = []

    class MaxGrad(Callback):
        def on_train_start(self, trainer, pl_module):  # gradients as the step used them: clipped inside its closure
            trainer.optimizers[0].register_step_post_hook(
                lambda opt, args, kwargs: largest.append(max(p.grad.abs().max().item() for p in pl_module.parameters()))
            )

    t = trainer(tmp_path, gradient_clip_val=1e-4, gradient_clip_algorithm="value", callbacks=[MaxGrad()])
    t.fit(Classifier(linear(), 4, lr=0.1), frames())
    assert len(largest) == 6 and max(largest) <= 1e-4


def test_accumulation_accumulates(tmp_path):
    t = trainer(tmp_path, accumulate_grad_batches=3)
    t.fit(Classifier(linear(), 4, optimizer="sgd", lr=0.1), frames())  # 6 batches
    assert t.global_step == 2
    # SGD on the mean of 3 batches' gradients: the same as one step per 3 batches by hand
    reference = linear()
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    batches = list(frames())
    for group in (batches[:3], batches[3:]):
        opt.zero_grad()
        for x, y in group:
            (nn.functional.cross_entropy(reference(x), y) / 3).backward()
        opt.step()
    for a, b in zip(t.lightning_module.model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


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


def test_wandb_offline(tmp_path, monkeypatch):
    import wandb

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    t = trainer(tmp_path, loggers=("wandb",))
    t.fit(Classifier(linear(), 4), frames(), frames(seed=1))
    run = t.logger.experiment
    assert run.settings.mode == "offline"
    assert run.summary["val/acc"] == pytest.approx(t.callback_metrics["val/acc"].item())
    wandb.finish()
    assert [p.stat().st_size > 0 for p in tmp_path.glob("wandb/offline-run-*/run-*.wandb")] == [True]


def test_wandb_environment_errors_come_in_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sideways")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError) as info:
        make_loggers(tmp_path, ("wandb",))
    assert "WANDB_MODE='sideways' is invalid" in str(info.value) and "WANDB_DIR=" in str(info.value)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR")
    with pytest.raises(ValueError, match="WANDB_MODE=online needs WANDB_API_KEY"):
        make_loggers(tmp_path, ("wandb",))


def test_live_plot_does_nothing_outside_jupyter(tmp_path):
    live = LivePlot(every_n_steps=1, min_seconds=0)
    t = trainer(tmp_path, callbacks=[live])
    t.fit(Classifier(linear(), 4), frames(), frames(seed=1))
    assert not live.active and live.history == {} and live.redraws == 0


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


def test_onnx_export_matches_trained_models(tmp_path):
    import onnxruntime as ort

    x = next(iter(frames()))[0]
    for name, net in (
        ("cnn", CNN((2, 8, 8), 4, widths=(4, 8))),
        ("logic", DiffLogicNet((2, 8, 8), 4, depth=2, width=200)),
    ):
        clf = Classifier(net, 4, lr=0.05)
        trainer(tmp_path / name).fit(clf, frames())
        inputs = x if name == "cnn" else (x > 0).float()  # counts for the CNN, bits for the logic network
        path = export_onnx(clf.model, inputs, tmp_path / f"{name}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = clf.model.eval()(inputs[:5]).numpy()
        assert abs(session.run(None, {"frames": inputs[:5].numpy()})[0] - expected).max() < 1e-4  # dynamic batch


class Noisy(nn.Module):
    "Adds fresh uniform noise: onnxruntime draws other numbers than PyTorch, so the export check must fail."

    def forward(self, x):
        return x + torch.rand_like(x)


def test_onnx_export_refuses_a_mismatch_and_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="onnxruntime output differs from PyTorch"):
        export_onnx(Noisy(), torch.zeros(4, 3), tmp_path / "noisy.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (none here)")
def test_cuda_memory_returns_to_baseline_between_epochs(tmp_path):
    allocated = []

    class Allocated(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())

    t = trainer(tmp_path, max_epochs=5, accelerator="gpu", devices=1, callbacks=[Allocated()])
    t.fit(Classifier(CNN((2, 8, 8), 4, widths=(16, 32)), 4), frames(n=320), frames(seed=1))
    assert max(allocated[1:]) <= allocated[1]  # after the first epoch (optimiser state created), no growth
