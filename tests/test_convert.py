"""Integration tests of convert_model: whole networks of the shapes people use, validated in both engine modes."""

import logging

import pytest
import torch
from torch import nn

from marble_nb.convert import ConversionError, UnsupportedLayerError, convert_model, supported_layers
from marble_nb.engine import run
from marble_nb.io import load, save
from marble_nb.models import mobilenet_shaped, resnet18_shaped, vgg11_shaped
from marble_nb.validate import validate


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    "Give every BatchNorm non-trivial statistics, as a trained network has."
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


NETWORKS = {
    "resnet18": (lambda: resnet18_shaped((3, 32, 32)), (3, 32, 32)),
    "vgg11": (lambda: vgg11_shaped((3, 32, 32)), (3, 32, 32)),
    "mobilenet": (lambda: mobilenet_shaped((3, 24, 24)), (3, 24, 24)),
}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("fold", [True, False])
def test_networks_convert_and_validate(name, fold):
    make, shape = NETWORKS[name]
    torch.manual_seed(1)
    model = randomise_batchnorm(make())
    x = torch.randn(2, *shape)
    graph = convert_model(model, x, config=dict(fold_batchnorm=fold))
    for mode in ("compact", "synapse"):
        report = validate(model, graph, x, mode=mode, rtol=1e-4, atol=1e-4)
        assert report.passed, repr(report)


def test_dry_run_counts_match_the_graph_and_allocate_no_synapses():
    model = randomise_batchnorm(resnet18_shaped())
    x = torch.randn(1, 3, 32, 32)
    summary = convert_model(model, x, dry_run=True)
    graph = convert_model(model, x)
    assert summary.totals == graph.summary().totals
    assert not any(type(c.op).__name__ == "Sparse" and c.op.src.numel() > 10_000 for c in graph.connections)


def test_round_trip_through_a_file(tmp_path):
    model = randomise_batchnorm(mobilenet_shaped())
    x = torch.randn(2, 3, 24, 24)
    graph = load(save(convert_model(model, x), tmp_path / "mobilenet.marble"))
    torch.testing.assert_close(run(graph, x), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_every_unsupported_item_is_listed_once():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Upsample(scale_factor=2)
            self.up2 = nn.Upsample(scale_factor=2)
            self.rnn_like = nn.Hardswish()

        def forward(self, x):
            return torch.erf(self.rnn_like(self.up2(self.up(x))))

    with pytest.raises(UnsupportedLayerError) as info:
        convert_model(Odd(), torch.randn(1, 1, 4, 4))
    message = str(info.value)
    assert "Upsample is not supported for conversion (module at up, up2)" in message
    assert "Hardswish is not supported for conversion" in message
    assert "torch.erf is not supported for conversion" in message
    assert message.count("is not supported for conversion") == 3


def test_invalid_settings_name_setting_and_value():
    with pytest.raises(ConversionError, match="padding_mode='circular'"):
        convert_model(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), torch.randn(1, 1, 5, 5))
    with pytest.raises(ConversionError, match="no running statistics"):
        convert_model(nn.BatchNorm2d(2, track_running_stats=False), torch.randn(2, 2, 3, 3))
    with pytest.raises(ValueError, match="needs example_input"):
        convert_model(nn.Linear(2, 2))


def test_fallback_is_logged(caplog):
    class Early(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x) if float(x.mean()) > 0 else self.b(x)

    with caplog.at_level(logging.WARNING, logger="marble_nb"):
        graph = convert_model(Early(), torch.ones(2, 3))
    assert "recording a run" in caplog.text
    assert graph.metadata["traced_by"] == "recorded run"


def test_registry_inventory():
    inventory = supported_layers()
    for name in ("Linear", "Conv2d", "BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d", "GELU", "Softmax", "Flatten"):
        assert name in inventory["modules"]
    assert "torch.nn.functional.relu" in inventory["functions"]
    assert "view" in inventory["methods"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_convert_on_cuda():
    model = mobilenet_shaped().cuda().eval()
    x = torch.randn(2, 3, 24, 24, device="cuda")
    graph = convert_model(model, x)
    torch.testing.assert_close(run(graph, x), model(x).detach(), rtol=1e-4, atol=1e-4)
