"""The main job (`marble-demo`) end to end at a tiny scale: exit codes, exported files, exactness, resume."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from marble_nb.demo import DemoConfig, main, prepare_data, whole_split
from marble_nb.engine import run
from marble_nb.io import load

TINY = ["--n-time-bins", "1", "--encoding", "binary", "--depth", "2", "--width", "1200", "--quiet"]


def epochs_logged(run_dir: Path) -> list[set[int]]:
    "The epochs that logged a training loss, per CSV log version of a run, in version order."
    versions = sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    out = []
    for version in versions:
        with open(version / "metrics.csv") as f:
            out.append({int(row["epoch"]) for row in csv.DictReader(f) if row.get("train/loss")})
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_files_round_trip_and_agree(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["check"]["graph_disagreements"] == 0 and report["check"]["packed_disagreements"] == 0
    assert 0.0 <= report["test"]["acc"] <= 1.0 and report["config"]["width"] == 1200
    data = prepare_data(DemoConfig(n_time_bins=1, encoding="binary", progress=False))
    frames, _ = whole_split(data)
    graph = load(report["files"]["marble"])
    scores = run(graph, frames.flatten(1), mode="compact")
    onnx = ort.InferenceSession(report["files"]["onnx"], providers=["CPUExecutionProvider"])
    (onnx_scores,) = onnx.run(None, {"frames": frames.numpy()})
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-5)
    assert torch.equal(torch.from_numpy(onnx_scores).argmax(1), scores.argmax(1))


def test_resume_continues_from_last_checkpoint(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--out", str(run_dir)]) == 0
    assert main([*TINY, "--epochs", "2", "--out", str(run_dir), "--resume"]) == 0
    first, second = epochs_logged(run_dir)
    assert (first, second) == ({0}, {1})  # the second run trained epoch 1 only, after restoring epoch 0
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1


def test_usage_errors_exit_2():
    for argv in (["--width", "1234"], ["--epochs", "0"], ["--config", "/no/such.yaml"], ["--bogus"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2, argv


def test_console_script_help():
    script = Path(sys.executable).with_name("marble-demo")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--resume" in done.stdout and "--width" in done.stdout and "--config" in done.stdout
