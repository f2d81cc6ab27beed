"""Fused recurrent cells: compact mode's one-step LSTM/GRU/RNN blocks against the unfused plan, synapse mode and
PyTorch; cells edited so that they no longer match run group by group."""

import pytest
import torch
from torch import nn

from marble_nb import engine
from marble_nb.convert_recurrent import convert_cell, convert_recurrent, time_parallel_split
from marble_nb.engine import _plan, run, run_all
from marble_nb.kinds import KINDS, register_kind

CONFIGS = [
    (nn.RNN, dict(num_layers=2, nonlinearity="tanh", bidirectional=True)),
    (nn.RNN, dict(num_layers=2, nonlinearity="relu", batch_first=True, bias=False)),
    (nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True)),
    (nn.GRU, dict(num_layers=3, bias=False)),
    (nn.LSTM, dict(num_layers=2, bidirectional=True)),
    (nn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True, proj_size=3)),
    (nn.LSTM, dict(num_layers=3, bias=False)),
]


def leaves(out):
    return [out] if torch.is_tensor(out) else [t for o in out for t in leaves(o)]


def assert_same(got, want, atol=2e-5):
    for g, w in zip(leaves(got), leaves(want), strict=True):
        torch.testing.assert_close(g, w, atol=atol, rtol=1e-4)


def blocks(graph):
    "The block entries (several groups at once) of a graph's fused compact plan."
    return [name for name, _ in _plan(graph, "compact", True).steps if isinstance(name, tuple)]


def step_graphs(net):
    return [time_parallel_split(g)[1] for layer in net.cells for g in layer]


def case(cls, kw):
    "A model, its converted network, an input and a random initial state in PyTorch's layout."
    torch.manual_seed(0)
    model = cls(6, 5, **kw).eval()
    net = convert_recurrent(model)
    x = torch.randn(3, 7, 6)  # batch 3 with batch_first, else 3 steps of batch 7
    n = net.num_layers * net.directions
    h0 = tuple(torch.randn(n, 3 if model.batch_first else 7, s) for s in net.state_sizes().values())
    return model, net, x, h0 if cls is nn.LSTM else h0[0]


@pytest.mark.parametrize("cls,kw", CONFIGS)
def test_fused_equals_unfused_synapse_and_pytorch(cls, kw, monkeypatch):
    model, net, x, h0 = case(cls, kw)
    with torch.no_grad():
        fused = [net(x), net(x, h0)]
        assert all(len(blocks(g)) == 1 for g in step_graphs(net))  # every layer and direction ran as one block
        synapse = [net(x, mode="synapse"), net(x, h0, mode="synapse")]
        want = [model(x), model(x, h0)]
        monkeypatch.setattr(engine, "BLOCK_FUSIONS", [])  # the same network, converted anew, without blocks
        plain = convert_recurrent(model)
        unfused = [plain(x), plain(x, h0)]
        assert all(blocks(g) == [] for g in step_graphs(plain))
    for got, *others in zip(fused, unfused, synapse, want, strict=True):
        for other in others:
            assert_same(got, other)


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_cells(cls, bias):
    torch.manual_seed(3)
    cell = cls(4, 6, bias=bias)
    conv = convert_cell(cell)
    x = torch.randn(5, 4)
    state = (torch.randn(5, 6), torch.randn(5, 6)) if cls is nn.LSTMCell else torch.randn(5, 6)
    with torch.no_grad():
        got = conv(x, state)
        assert len(blocks(conv.graph)) == 1  # the whole cell graph: x_gates, then the block
        assert_same(got, cell(x, state))
        assert_same(got, conv(x, state, mode="synapse"))
        names = dict(zip(conv.graph.inputs[1:], state if isinstance(state, tuple) else (state,), strict=True))
        every = run_all(conv.graph, x, state=names)
        assert_same(got, tuple(every[n] for n in conv.graph.outputs))


def grown_net(cls, edit):
    "A one-layer network, a copy whose cell is edited by `edit(cell graph)`, an input and PyTorch's output for it."
    model, net, x, _ = case(cls, dict(num_layers=1))
    edited = convert_recurrent(model)
    edit(edited.cells[0][0])
    with torch.no_grad():
        return net, edited, x, model(x)


GATES = {nn.RNN: "h_new", nn.GRU: "h_gates", nn.LSTM: "gates"}  # the groups the recurrent weights feed
GROWN = {nn.RNN: "x_h_new", nn.GRU: "h_gates", nn.LSTM: "gates"}  # (the RNN's h_new is its state: fixed size)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_grown_neurons_fall_back_to_the_unfused_plan(cls):
    "A gate group grown by neurons that nothing reads: no block any more, and the same answers."
    net, grown, x, want = grown_net(cls, lambda g: g.add_neurons(GROWN[cls], 2))
    with torch.no_grad():
        assert_same(grown(x), want)
        assert_same(grown(x), net(x))
    assert blocks(step_graphs(grown)[0]) == [] and len(blocks(step_graphs(net)[0])) == 1


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_added_synapses_fall_back_and_change_the_answer(cls):
    "One more recurrent synapse: the cell computes something else, the same in compact and synapse mode."
    net, grown, x, want = grown_net(cls, lambda g: g.add_synapses("h", GATES[cls], [0], [1], [0.75]))
    with torch.no_grad():
        compact, synapse = grown(x), grown(x, mode="synapse")
    assert blocks(step_graphs(grown)[0]) == []
    assert_same(compact, synapse)
    assert not torch.allclose(compact[0], want[0], atol=1e-3)


def test_a_member_wanted_outside_the_block_falls_back():
    "A cell whose gates are also an output: the block would hide them, so the groups run one by one."
    torch.manual_seed(4)
    cell = nn.LSTMCell(3, 4)
    conv = convert_cell(cell)
    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    conv.graph.set_outputs("h_new", "c_new", "gates")
    with torch.no_grad():
        (h, c, gates), _ = run(conv.graph, x, state=dict(h=state[0], c=state[1]))
        want_h, want_c = cell(x, state)
    assert blocks(conv.graph) == []
    assert_same((h, c), (want_h, want_c))
    torch.testing.assert_close(gates[:, :4], torch.sigmoid(x @ cell.weight_ih[:4].T + state[0] @ cell.weight_hh[:4].T
                                                           + cell.bias_ih[:4] + cell.bias_hh[:4]).detach())  # fmt: skip


def test_a_re_registered_kind_is_not_fused():
    "The block computes the built-in kinds itself: a kind registered anew under the same name runs group by group."
    torch.manual_seed(5)
    model = nn.GRU(3, 4).eval()
    x = torch.randn(6, 2, 3)
    builtin = KINDS["tanh"]
    try:
        register_kind("tanh")(lambda pre, group: torch.clamp(pre, -0.5, 0.5))  # another tanh
        net = convert_recurrent(model)
        with torch.no_grad():
            compact, synapse, want = net(x), net(x, mode="synapse"), model(x)
        assert blocks(step_graphs(net)[0]) == []
    finally:
        KINDS["tanh"] = builtin
    assert_same(compact, synapse)
    assert not torch.allclose(compact[0], want[0], atol=1e-3)
    with torch.no_grad():
        assert_same(net(x), want)  # the built-in kind is back: the plan is rebuilt, and fused
    assert len(blocks(step_graphs(net)[0])) == 1


def test_fused_block_reads_weights_at_call_time():
    "Weights changed in place or replaced (another dtype) after the block kept a transposed copy are used."
    torch.manual_seed(6)
    model = nn.LSTM(3, 4, num_layers=2).eval()
    net = convert_recurrent(model)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        net(x)
        for layer, cell in enumerate(net.cells):
            (dense,) = [c for c in cell[0].incoming("gates") if c.src == "h"]
            dense.op.weight.mul_(0.5)  # in place: the cell's recurrent weights, g rows included (scaled by 2)
            getattr(model, f"weight_hh_l{layer}").mul_(0.5)
        assert_same(net(x), model(x))
        net.to(dtype=torch.float64)
        assert_same(net(x.double()), model.double()(x.double()), atol=1e-10)


def test_fused_block_is_differentiable(monkeypatch):
    "With autograd recording the recurrent weights, the fused block gives the unfused plan's gradients."
    x = torch.randn(4, 3, 2)
    grads = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(engine, "BLOCK_FUSIONS", [])
        torch.manual_seed(7)
        net = convert_recurrent(nn.LSTM(2, 3, num_layers=2))
        weights = [c.op.weight.requires_grad_() for layer in net.cells for c in layer[0].connections if c.src == "h"]
        net(x)[0].pow(2).sum().backward()
        grads.append([w.grad for w in weights])
        assert [len(blocks(g)) for g in step_graphs(net)] == [int(fused)] * 2
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_fused_cell_module_traces_and_exports(cls):
    "A cell graph as an nn.Module: jit.trace (with its check of a second run) and torch.export give its outputs."
    torch.manual_seed(8)
    module = convert_cell(cls(3, 4)).graph.to_module()
    x = torch.randn(2, 3)
    flat = lambda result: leaves(result[0]) + list(result[1].values())  # noqa: E731  (outputs, new state)
    want = flat(module(x))
    assert_same(flat(torch.jit.trace(module, (x,), strict=False)(x)), want)
    assert_same(flat(torch.export.export(module, (x,)).module()(x)), want)
