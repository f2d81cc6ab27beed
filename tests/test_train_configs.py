"The configs/ folder: written by write_configs, every file parses, the N-Digits ones train (a few batches)."

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml

from marble_nb.train import load_checkpoint
from marble_nb.train_cli import CONFIG_DATASETS, CONFIG_MODELS, cli, write_configs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FILES = sorted(CONFIGS.glob("*/*.yaml"))
TINY = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.loggers", "[]"]


def test_configs_are_the_generated_ones(tmp_path):
    written = write_configs(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in written) == [p.relative_to(CONFIGS) for p in FILES]
    for path in written:
        assert path.read_text().replace(str(tmp_path), "configs") == (CONFIGS / path.relative_to(tmp_path)).read_text()
    assert len(FILES) == len(CONFIG_DATASETS) * len(CONFIG_MODELS) == 35


def test_every_config_parses():
    parser = cli(["-c", str(FILES[0])], run=False).parser  # one parser: building it is the slow part
    for path in FILES:
        config = parser.parse_args(["-c", str(path)])
        dataset, model = path.parent.name, path.stem
        assert config.data.init_args.dataset == dataset
        assert config.model.model.class_path == CONFIG_MODELS[model]["class_path"]
        assert config.model.classes == config.model.model.init_args.classes == CONFIG_DATASETS[dataset]["classes"]


@pytest.mark.parametrize("path", [p for p in FILES if p.parent.name == "ndigits"], ids=lambda p: p.stem)
def test_print_config_resolves_defaults(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        cli(["fit", "-c", str(path), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    original = yaml.safe_load(path.read_text())
    assert (
        printed["model"]["model"]["init_args"] | original["model"]["model"]["init_args"]
        == printed["model"]["model"]["init_args"]
    )
    assert printed["trainer"]["top_k"] == 3 and "accelerator" in printed["trainer"]  # make_trainer's and Trainer's
    assert printed["data"]["init_args"]["framing"]["encoding"] == original["data"]["init_args"]["framing"]["encoding"]


@pytest.mark.parametrize("path", [p for p in FILES if p.parent.name == "ndigits"], ids=lambda p: p.stem)
def test_ndigits_config_fits_a_few_batches(path, tmp_path):
    run = cli(["fit", "-c", str(path), "--trainer.run_dir", str(tmp_path), *TINY, *QUIET])
    assert run.trainer.global_step == 2
    assert torch.isfinite(run.trainer.callback_metrics["val/loss"])
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    best = load_checkpoint(tmp_path, "best")
    assert best.name.startswith("best-0-2-")


def test_cli_test_subcommand_takes_best_and_resume_takes_last(tmp_path):
    cnn = CONFIGS / "ndigits" / "cnn.yaml"
    cli(["fit", "-c", str(cnn), "--trainer.run_dir", str(tmp_path), *TINY, *QUIET])
    tested = cli(["test", "-c", str(cnn), "--trainer.run_dir", str(tmp_path), "--ckpt_path", "best", *QUIET])
    assert 0 <= tested.trainer.callback_metrics["test/acc"] <= 1
    assert tested.model.confusion.compute().sum() == 360  # the whole N-Digits test split
    more = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    resumed = cli(["fit", "-c", str(cnn), "--trainer.run_dir", str(tmp_path), "--ckpt_path", "last", *more, *QUIET])
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
