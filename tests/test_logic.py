"""Logic gate layers: gates vs truth tables, fast vs 16-output formulation, checkpoints, convolutions."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import marble_nb.logic as logic_module
from marble_nb.logic import GroupSum, LogicConv2d, LogicLayer, find_c_compiler, from_difflogic, unique_connections

# The 16 gates as the paper lists them (difflogic order), written independently of marble_nb.
PAPER_GATES = [
    lambda a, b: 0 * a,
    lambda a, b: a * b,
    lambda a, b: a - a * b,
    lambda a, b: a,
    lambda a, b: b - a * b,
    lambda a, b: b,
    lambda a, b: a + b - 2 * a * b,
    lambda a, b: a + b - a * b,
    lambda a, b: 1 - (a + b - a * b),
    lambda a, b: 1 - (a + b - 2 * a * b),
    lambda a, b: 1 - b,
    lambda a, b: 1 - b + a * b,
    lambda a, b: 1 - a,
    lambda a, b: 1 - a + a * b,
    lambda a, b: 1 - a * b,
    lambda a, b: 0 * a + 1,
]
TRUTH = {  # outputs for (a, b) = (0,0), (0,1), (1,0), (1,1)
    "FALSE": [0, 0, 0, 0], "AND": [0, 0, 0, 1], "A_AND_NOT_B": [0, 0, 1, 0], "A": [0, 0, 1, 1],
    "NOT_A_AND_B": [0, 1, 0, 0], "B": [0, 1, 0, 1], "XOR": [0, 1, 1, 0], "OR": [0, 1, 1, 1],
    "NOR": [1, 0, 0, 0], "XNOR": [1, 0, 0, 1], "NOT_B": [1, 0, 1, 0], "A_OR_NOT_B": [1, 0, 1, 1],
    "NOT_A": [1, 1, 0, 0], "NOT_A_OR_B": [1, 1, 0, 1], "NAND": [1, 1, 1, 0], "TRUE": [1, 1, 1, 1],
}  # fmt: skip
CORNERS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def single_gate_layer(gate: int, implementation: str) -> LogicLayer:
    "A 2-input, 1-gate layer reading (a, b) = (x0, x1) whose softmax is exactly one-hot on `gate`."
    layer = LogicLayer(2, 1, implementation=implementation)
    layer.indices = (torch.tensor([0]), torch.tensor([1]))
    with torch.no_grad():
        layer.weights.fill_(-float("inf"))
        layer.weights[0, gate] = 0.0
    return layer


FOUR_COEFFICIENT = ["fast", "torch"]  # "fast" runs the C kernel when a C compiler exists, "torch" never does


@pytest.mark.parametrize("implementation", [*FOUR_COEFFICIENT, "python"])
@pytest.mark.parametrize("gate", range(16))
def test_gates_match_truth_tables_hard_and_relaxed(gate, implementation):
    layer = single_gate_layer(gate, implementation)
    expected = torch.tensor(list(TRUTH.values())[gate], dtype=torch.float32)
    layer.eval()
    assert torch.equal(layer(CORNERS)[:, 0], expected)
    layer.train()
    assert torch.equal(layer(CORNERS)[:, 0], expected)
    x = torch.rand(50, 2)
    torch.testing.assert_close(layer(x)[:, 0], PAPER_GATES[gate](x[:, 0], x[:, 1]), atol=1e-6, rtol=0)


def _outputs_and_grads(layer: LogicLayer, x: torch.Tensor, upstream: torch.Tensor):
    "Output, input gradient and logit gradient of `layer` for a fixed upstream gradient."
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y * upstream).sum().backward()
    grad_w = None if layer.weights.grad is None else layer.weights.grad.clone()
    return y.detach(), x.grad.clone(), grad_w


@pytest.mark.parametrize("implementation", FOUR_COEFFICIENT)
@settings(max_examples=40, deadline=None)
@given(
    in_dim=st.integers(1, 40),
    extra=st.integers(0, 40),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**16),
    grad_factor=st.sampled_from([1.0, 0.5, 2.0]),
    training=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    connections=st.sampled_from(["random", "unique"]),
)
def test_fast_equals_16_output_formulation(
    implementation, in_dim, extra, batch, seed, grad_factor, training, dtype, connections
):
    """Outputs and gradients agree with the 16-output formulation: to 1e-6 in float64; to 1e-5 in float32, where
    an input's gradient sums up to 2·out_dim terms in another order and rounds at a few 1e-6."""
    tolerance = 1e-6 if dtype == torch.float64 else 1e-5
    out_dim = (in_dim + 1) // 2 + extra
    if connections == "unique" and (in_dim < 2 or out_dim > in_dim * (in_dim - 1) // 2):
        connections = "random"
    torch.manual_seed(seed)
    fast = LogicLayer(
        in_dim, out_dim, seed=seed, grad_factor=grad_factor, connections=connections, implementation=implementation
    ).to(dtype)
    slow = LogicLayer(in_dim, out_dim, seed=seed, grad_factor=grad_factor, implementation="python").to(dtype)
    slow.load_state_dict(fast.state_dict())
    fast.train(training), slow.train(training)
    x = torch.rand(batch, in_dim, dtype=dtype)
    upstream = torch.randn(batch, out_dim, dtype=dtype)
    for got, want in zip(_outputs_and_grads(fast, x, upstream), _outputs_and_grads(slow, x, upstream), strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("implementation", FOUR_COEFFICIENT)
def test_fast_on_several_threads_equals_16_output_formulation(implementation):
    """Large enough for the C kernel to split the work over threads; an odd batch, grad_factor, unique wiring.

    Float64 must agree with the 16-output formulation to 1e-6. Float32 is compared with the float64 result:
    its batch sums of 257 terms round at about 1e-6 (the 16-output formulation's own float32 error), so 1e-5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = LogicLayer(300, 500, seed=3, grad_factor=2.0, connections="unique", implementation=implementation)
        slow = LogicLayer(300, 500, seed=3, grad_factor=2.0, implementation="python")
        slow.load_state_dict(fast.state_dict())
        x, upstream = torch.rand(257, 300, dtype=torch.float64), torch.randn(257, 500, dtype=torch.float64)
        want = _outputs_and_grads(slow.double(), x, upstream)
        for got, ref in zip(_outputs_and_grads(fast.double(), x, upstream), want, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
        for got, ref in zip(_outputs_and_grads(fast.float(), x.float(), upstream.float()), want, strict=True):
            torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def _autograd_nodes(t: torch.Tensor) -> set[str]:
    "Names of the autograd nodes `t` was computed through."
    names, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo += [next_node for next_node, _ in node.next_functions]
    return names


@pytest.mark.skipif(not find_c_compiler(), reason="needs a C compiler")
def test_fast_trains_with_the_c_kernel_when_a_compiler_exists():
    assert logic_module.training_kernel() is not None
    fast = _autograd_nodes(LogicLayer(20, 30, seed=0)(torch.rand(4, 20)))
    assert {"CompiledGatesBackward", "CompiledMixtureBackward"} <= fast
    assert "LogicGateFunctionBackward" not in fast
    torch_ops = _autograd_nodes(LogicLayer(20, 30, implementation="torch")(torch.rand(4, 20)))
    assert "LogicGateFunctionBackward" in torch_ops and "CompiledGatesBackward" not in torch_ops


@pytest.fixture
def fresh_training_kernel(monkeypatch, tmp_path):
    "training_kernel() rebuilt from an empty cache inside the test, and reset after it."
    monkeypatch.setenv("MARBLE_NB_CACHE", str(tmp_path))
    logic_module.training_kernel.cache_clear()
    yield
    logic_module.training_kernel.cache_clear()


@pytest.mark.parametrize("broken", ["no compiler", "failing compiler"])
def test_fast_falls_back_to_pytorch_without_a_working_compiler(broken, monkeypatch, caplog, fresh_training_kernel):
    if broken == "no compiler":
        monkeypatch.setattr(logic_module, "find_c_compiler", lambda: None)
    else:
        monkeypatch.setenv("CC", "false")  # exists, exits 1: the build fails
    with caplog.at_level("INFO", logger="marble_nb"):
        assert logic_module.training_kernel() is None
    assert "PyTorch operations" in caplog.text
    fast, reference = LogicLayer(12, 20, seed=0), LogicLayer(12, 20, seed=0, implementation="python")
    x, upstream = torch.rand(5, 12), torch.randn(5, 20)
    assert "LogicGateFunctionBackward" in _autograd_nodes(fast(x))
    for got, want in zip(
        _outputs_and_grads(fast, x, upstream), _outputs_and_grads(reference, x, upstream), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_group_sum_of_feature_major_outputs_equals_plain_sum():
    "GroupSum sums a LogicLayer's transposed-view output row-wise; values and gradients as for a plain tensor."
    rows = torch.rand(60, 7, dtype=torch.float64)
    view = rows.clone().requires_grad_(True)
    plain = rows.t().contiguous().requires_grad_(True)
    head = GroupSum(3, tau=2.0)
    upstream = torch.randn(7, 3, dtype=torch.float64)
    got, want = head(view.t()), head(plain)
    torch.testing.assert_close(got, want)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(view.grad.t(), plain.grad)


def test_leading_dimensions_and_transposed_views_chain():
    net = nn.Sequential(LogicLayer(6, 8, seed=0), LogicLayer(8, 8, seed=1), GroupSum(2, tau=2.0))
    x = torch.rand(3, 5, 6)
    y = net(x)
    assert y.shape == (3, 5, 2)
    torch.testing.assert_close(y, net(x.reshape(15, 6)).reshape(3, 5, 2))


def test_checkpoint_round_trip_keeps_wiring(tmp_path):
    net = nn.Sequential(nn.Flatten(), LogicLayer(12, 20, seed=0), LogicLayer(20, 20, seed=1), GroupSum(4, 2.0))
    path = tmp_path / "logic.pt"
    torch.save(net.state_dict(), path)
    fresh = nn.Sequential(nn.Flatten(), LogicLayer(12, 20, seed=7), LogicLayer(20, 20, seed=8), GroupSum(4, 2.0))
    assert not torch.equal(fresh[1].wiring, net[1].wiring)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.rand(9, 3, 4)
    for mode in (True, False):
        net.train(mode), fresh.train(mode)
        assert torch.equal(fresh(x), net(x))
    assert all(torch.equal(a, b) for a, b in zip(fresh[2].indices, net[2].indices, strict=True))


def test_indices_setter_validates():
    layer = LogicLayer(4, 3)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        layer.indices = (torch.tensor([0, 1, 4]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="two tensors of 3 indices"):
        layer.indices = (torch.tensor([0, 1]), torch.tensor([0, 1]))


@settings(max_examples=30, deadline=None)
@given(in_dim=st.integers(2, 60), data=st.data())
def test_unique_connections_are_distinct_and_cover_inputs(in_dim, data):
    out_dim = data.draw(st.integers((in_dim + 1) // 2, min(in_dim * (in_dim - 1) // 2, 400)))
    pairs = unique_connections(in_dim, out_dim, torch.Generator().manual_seed(0))
    assert bool((pairs[0] != pairs[1]).all())
    assert len({tuple(sorted(p)) for p in pairs.T.tolist()}) == out_dim
    assert torch.unique(pairs).numel() == in_dim


def test_training_reduces_loss_on_a_logic_task():
    "A small network learns XOR of two input bits (gradients reach logits through all layers)."
    torch.manual_seed(0)
    x = torch.randint(0, 2, (256, 8)).float()
    labels = (x[:, 0] != x[:, 1]).long()
    net = nn.Sequential(LogicLayer(8, 64, seed=0), LogicLayer(64, 64, seed=1), GroupSum(2, tau=4.0))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(net(x), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_logic_conv_gradients_and_residual_init():
    conv = LogicConv2d(2, 6, kernel_size=3, depth=3, padding=1, seed=0, init="residual")
    x = torch.rand(2, 2, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weights.grad.shape == (6, 7, 16)
    assert conv.weights.argmax(-1).eq(3).all()


def test_from_difflogic_keeps_grad_factor_and_unknown_connections():
    class StandIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_dim, self.out_dim, self.grad_factor, self.connections = 4, 3, 2.0, "custom"
            self.weights = nn.Parameter(torch.randn(3, 16))
            self.indices = (torch.tensor([0, 1, 2]), torch.tensor([3, 3, 0]))

    layer = from_difflogic(StandIn())
    assert isinstance(layer, LogicLayer) and layer.grad_factor == 2.0
    assert layer.wiring.tolist() == [[0, 1, 2], [3, 3, 0]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_layer_on_cuda_matches_cpu():
    layer = LogicLayer(30, 40, seed=0)
    x = torch.rand(8, 30)
    cuda = LogicLayer(30, 40, seed=0, device="cuda")
    torch.testing.assert_close(cuda(x.cuda()).cpu(), layer(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("in_dim, out_dim", [(10, 12), (4, 40)])  # saves the gathered pairs / the narrow input
def test_backward_twice_with_retained_graph(in_dim, out_dim):
    "The in-place reuse of saved inputs only happens when the graph is not retained."
    layer = LogicLayer(in_dim, out_dim, seed=0)
    x = torch.rand(4, in_dim, requires_grad=True)
    y = layer(x)
    y.sum().backward(retain_graph=True)
    first = (x.grad.clone(), layer.weights.grad.clone())
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first[0])
    torch.testing.assert_close(layer.weights.grad, 2 * first[1])
