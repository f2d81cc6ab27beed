"""Lightning's DDP with 2 CPU processes (gloo), run through `marble-train` on N-Digits.

Two processes with batch 16 see, step by step, the same 32 samples as one process with batch 32 when both use
Lightning's DistributedSampler (one process: `strategy=ddp, devices=1`), and DDP averages their gradients; so the
weights after the same steps and the validation metrics (reduced over both processes) must agree to float precision.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marble_nb.models import DiffLogicNet
from marble_nb.train import load_checkpoint

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ndigits" / "difflogic.yaml"
MARBLE_TRAIN = Path(sys.executable).with_name("marble-train")
SMALL = ["--model.model.init_args.width", "4000", "--model.model.init_args.depth", "2"]
PLAIN_SGD = ["--model.optimizer", "sgd", "--model.lr", "10.0", "--model.weight_decay", "0", "--model.scheduler", "none"]
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.enable_progress_bar", "false"]


def train(run: Path, devices: int, batch_size: int) -> dict:
    command = [str(MARBLE_TRAIN), "fit", "-c", str(CONFIG), "--trainer.run_dir", str(run), *SMALL, *PLAIN_SGD, *TINY]
    command += ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", str(devices)]
    command += ["--data.init_args.batch_size", str(batch_size)]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"))
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()))
    metrics = {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v}
    state = torch.load(load_checkpoint(run, "last"), weights_only=False)
    return dict(metrics=metrics, weights=state["state_dict"], step=state["global_step"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(tmp_path):
    one = train(tmp_path / "one", devices=1, batch_size=32)
    two = train(tmp_path / "two", devices=2, batch_size=16)
    assert one["step"] == two["step"] == 4
    initial = DiffLogicNet((3, 2, 34, 34), 10, depth=2, width=4000).state_dict()  # the config's seed: same init
    for name, value in one["weights"].items():
        assert torch.allclose(value, two["weights"][name], atol=1e-5), name
    moved = max(
        (one["weights"][f"model.{k}"] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point()
    )
    assert moved > 1e-2  # the 4 steps changed the weights: the agreement above is not trivial
    assert set(one["metrics"]) >= {"val/loss", "val/acc", "val/f1"}
    for name, value in one["metrics"].items():
        assert abs(value - two["metrics"][name]) < 1e-4, (name, value, two["metrics"][name])
