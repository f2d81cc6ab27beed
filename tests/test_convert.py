"""Integration tests of convert_model: whole networks of the shapes people use, validated in both engine modes."""

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


class PooledHead(nn.Module):
    "Adaptive pooling of both kinds, reductions (mean, sum with keepdim), a concatenation and a residual."

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.avg, self.max = nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveMaxPool2d((2, 5))
        self.fc = nn.Linear(6 * 3 * 2 + 6 * 2 * 5 + 6 + 6 * 10, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x)) + x.mean(1, keepdim=True)
        parts = [self.avg(h).flatten(1), self.max(h).flatten(1), h.mean((2, 3)), h.sum(2, keepdim=True).flatten(1)]
        return self.fc(torch.cat(parts, 1))


DRY_RUN_MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), (784,), {}),
    "cnn": (
        lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 59 * 59, 10)),
        (1, 120, 120),  # 115k conv neurons: the dry run drops tensors as it goes (see HOLLOW_NEURONS)
        {},
    ),
    "resnet18": (lambda: randomise_batchnorm(resnet18_shaped((3, 64, 64), width=16)), (3, 64, 64), {}),
    "resnet18-unfolded-bias-neurons": (
        lambda: randomise_batchnorm(resnet18_shaped()),
        (3, 32, 32),
        dict(fold_batchnorm=False, bias_neurons=True),
    ),
    "pooled-head": (PooledHead, (3, 9, 10), {}),
    "chain-of-shape-rules": (  # a dry run computes these shapes (register_shape) instead of running the layers
        lambda: randomise_batchnorm(
            nn.Sequential(
                nn.Conv2d(2, 6, 3, padding=1),
                nn.BatchNorm2d(6),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                nn.Conv2d(6, 4, 3, stride=2, padding="valid"),
                nn.GELU(),
                nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                nn.AdaptiveAvgPool2d((2, None)),
                nn.Flatten(),
                nn.Linear(16, 16),
                nn.LayerNorm(16),
                nn.Dropout(),
                nn.PReLU(),
                nn.Linear(16, 5),
                nn.LogSoftmax(dim=1),
            )
        ),
        (2, 15, 13),
        {},
    ),
    "chain-run": (  # Unflatten has no shape rule: the dry run runs the chain
        lambda: nn.Sequential(nn.Linear(12, 12), nn.Unflatten(1, (3, 4)), nn.Flatten(), nn.Linear(12, 2)),
        (12,),
        {},
    ),
}


@pytest.mark.parametrize("name", DRY_RUN_MODELS)
def test_dry_run_counts_equal_the_graph(name):
    make, shape, config = DRY_RUN_MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, *shape)
    dry = convert_model(model, x, config=config, dry_run=True)
    graph = convert_model(model, x, config=config)
    assert dry.rows == graph.summary().rows  # every group, kind, shape, neuron, synapse and parameter count
    assert dry.totals["synapses"] == graph.materialize().num_synapses()  # the counts are the real synapses
    # nothing explicit was built: adaptive pooling and reductions stay compact operators
    assert not any(type(c.op).__name__ == "Sparse" for c in graph.connections)
    torch.testing.assert_close(run(graph, x), model(x).detach(), rtol=1e-4, atol=1e-4)


class TorchCalls(TorchFunctionMode):
    "Records the name of every torch function and tensor method called while it is active."

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def test_dry_run_of_a_chain_runs_none_of_its_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1352, 10)).eval()
    x = torch.randn(1, 1, 28, 28)
    layer_functions = {"conv2d", "relu", "max_pool2d", "linear"}
    with TorchCalls() as real:
        graph = convert_model(model, x)
    with TorchCalls() as dry:
        summary = convert_model(model, x, dry_run=True)
    assert layer_functions <= real.names  # the real conversion measures the shapes by running the layers
    assert not layer_functions & dry.names, dry.names & layer_functions
    assert summary.rows == graph.summary().rows


def test_dry_run_runs_a_chain_when_a_layer_has_forward_hooks():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    seen = []
    model[1].register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    summary = convert_model(model, torch.randn(3, 6), dry_run=True)
    assert seen == [(3, 4)]  # the hook ran: it might have changed the result
    assert summary.rows == convert_model(model, torch.randn(3, 6)).summary().rows


def test_dry_run_of_a_chain_pytorch_refuses_raises_pytorchs_error():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(100, 2)).eval()
    x = torch.randn(1, 1, 8, 8)  # 4 x 6 x 6 = 144 features reach the Linear, not 100
    with pytest.raises(RuntimeError) as real:
        convert_model(model, x)
    with pytest.raises(RuntimeError) as dry:
        convert_model(model, x, dry_run=True)
    assert str(dry.value) == str(real.value)
    assert "shapes cannot be multiplied" in str(dry.value)


def test_dry_run_refuses_validate():
    with pytest.raises(ValueError, match="builds no graph to validate"):
        convert_model(nn.Linear(2, 2), torch.randn(1, 2), dry_run=True, validate=True)


DRY_RUN_MEMORY = """
import threading, time, psutil, torch
from marble_nb.convert import convert_model
from marble_nb.models import resnet18_shaped

convert_model(resnet18_shaped(), torch.randn(1, 3, 32, 32), dry_run=True)  # one-time costs: imports, kernels
torch.manual_seed(0)
model = resnet18_shaped((3, 224, 224), classes=1000, width=64).eval()  # ResNet-18 at full width and size
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    model(x)  # the model's own first forward pass is not the dry run's cost
proc, peak, done, ready = psutil.Process(), [0], threading.Event(), threading.Event()

def anonymous():
    "Resident memory the process allocated (RSS less file-backed pages, which a busy machine evicts and re-reads)."
    info = proc.memory_info()
    return info.rss - info.shared

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anonymous())
        ready.set()
        time.sleep(0.0005)

thread = threading.Thread(target=sample)
thread.start()
ready.wait()
growth = []
for _ in range(2):  # the first dry run of this model, then the same again (steady state)
    before = peak[0] = anonymous()
    summary = convert_model(model, x, dry_run=True)
    time.sleep(0.002)
    growth.append(max(peak[0], anonymous()) - before)
done.set()
thread.join()
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(*growth, params, summary.totals["synapses"])
"""


def test_dry_run_of_a_large_model_allocates_little_memory():
    out = subprocess.run([sys.executable, "-c", DRY_RUN_MEMORY], capture_output=True, text=True, check=True)
    first, again, params, synapses = map(int, out.stdout.split())
    assert synapses > 1.6e9  # 13 GB as explicit CSR synapses
    # A real conversion grows the process by 1.3x params (folded weights, per-neuron biases, indices); a dry run
    # computes no folded weights and drops biases and indices as it goes: 0.3-2.4 MB measured, 0.2-0.8 MB again.
    assert first < 0.1 * params, f"first dry run grew memory by {first / 1e6:.1f} MB (weights: {params / 1e6:.1f} MB)"
    assert again < 0.05 * params, f"second dry run grew memory by {again / 1e6:.1f} MB (weights: {params / 1e6:.1f} MB)"


def test_round_trip_through_a_file(tmp_path):
    model = randomise_batchnorm(mobilenet_shaped())
    x = torch.randn(2, 3, 24, 24)
    graph = load(save(convert_model(model, x), tmp_path / "mobilenet.marble"))
    torch.testing.assert_close(run(graph, x), model(x).detach(), rtol=1e-4, atol=1e-4)


def test_adaptive_pooling_and_reductions_round_trip_through_a_file(tmp_path):
    torch.manual_seed(0)
    model, x = PooledHead().eval(), torch.randn(3, 3, 9, 10)
    graph = convert_model(model, x)
    assert {"AdaptivePool", "Reduce"} <= {type(c.op).__name__ for c in graph.connections}
    loaded = load(save(graph, tmp_path / "pooled.marble"))
    assert loaded.summary().rows == graph.summary().rows
    for mode in ("compact", "synapse"):
        torch.testing.assert_close(run(loaded, x, mode=mode), model(x).detach(), rtol=1e-5, atol=1e-5)


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


def test_a_single_registered_layer_converts_without_fallback_warning(caplog):
    layer = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    with caplog.at_level(logging.WARNING, logger="marble_nb"):
        graph = convert_model(layer, x)
    assert caplog.records == []
    for mode in ("compact", "synapse"):
        torch.testing.assert_close(run(graph, x, mode=mode), layer(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(bias_mode="neurons"), r"unknown conversion option\(s\) \['bias_mode'\]"),
        (dict(dtype="int8"), "dtype='int8': expected a floating dtype"),
        (dict(fuse_activations="no"), "fuse_activations='no': expected true or false"),
        (dict(overrides={"0": dict(dtype="float16x")}), "dtype='float16x'"),
    ],
)
def test_bad_conversion_options_are_named(config, message):
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    with pytest.raises(ValueError, match=message):
        convert_model(model, torch.randn(1, 3), config=config)
