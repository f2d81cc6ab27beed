"""Recurrent networks as step graphs: settings, state, streams, cells; CPU and CUDA (skipped without it)."""

import pytest
import torch
from torch import nn

from marble_nb.convert_recurrent import RecurrentError, convert_cell, convert_recurrent
from marble_nb.engine import MODES

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def leaves(out):
    return [out] if torch.is_tensor(out) else [t for o in out for t in leaves(o)]


def assert_same(got, want):
    for g, w in zip(leaves(got), leaves(want), strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


CONFIGS = [
    (nn.RNN, dict(num_layers=3, nonlinearity="tanh", batch_first=True)),
    (nn.RNN, dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    (nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True)),
    (nn.GRU, dict(num_layers=1, bias=False)),
    (nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (nn.LSTM, dict(num_layers=3, batch_first=True, bias=False)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls,kw", CONFIGS)
def test_recurrent_matches_pytorch(device, mode, cls, kw):
    torch.manual_seed(0)
    model = cls(6, 5, **kw).eval().to(device)
    net = convert_recurrent(model).to(device)
    x = torch.randn(4, 9, 6, device=device)  # batch 4 with batch_first, else T=4 steps of batch 9
    batch = 4 if kw.get("batch_first") else 9
    with torch.no_grad():
        assert_same(net(x, mode=mode), model(x))
        n = kw["num_layers"] * (2 if kw.get("bidirectional") else 1)
        h0 = [torch.randn(n, batch, s, device=device) for s in net.state_sizes().values()]
        state = tuple(h0) if cls is nn.LSTM else h0[0]
        assert_same(net(x, state, mode=mode), model(x, state))


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_stream_in_chunks_equals_whole(cls):
    torch.manual_seed(1)
    model = cls(3, 4, num_layers=2).eval()
    net = convert_recurrent(model)
    x = torch.randn(20, 2, 3)
    with torch.no_grad():
        whole, final = model(x)
    pieces = [net.stream(chunk) for chunk in x.split([1, 6, 13])]
    torch.testing.assert_close(torch.cat(pieces), whole, atol=1e-5, rtol=1e-4)
    assert_same(net.state["h"], final[0] if cls is nn.LSTM else final)
    net.reset()
    assert net.state is None
    torch.testing.assert_close(net.stream(x[:4]), whole[:4], atol=1e-5, rtol=1e-4)


def test_state_errors():
    net = convert_recurrent(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(RecurrentError, match="bidirectional"):
        net.stream(torch.randn(2, 1, 3))
    with pytest.raises(RecurrentError, match=r"\(2, 1, 4\)"):
        net(torch.randn(2, 1, 3), (torch.zeros(1, 1, 4), torch.zeros(2, 1, 4)))


def test_counts_do_not_depend_on_length():
    net = convert_recurrent(nn.GRU(3, 4))
    counts = (net.num_neurons(), net.num_synapses())
    net(torch.randn(5, 1, 3))
    net(torch.randn(50, 1, 3))
    assert (net.num_neurons(), net.num_synapses()) == counts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_cells(mode, cls):
    torch.manual_seed(2)
    cell = cls(3, 5)
    conv = convert_cell(cell)
    x = torch.randn(4, 3)
    state = (torch.randn(4, 5), torch.randn(4, 5)) if cls is nn.LSTMCell else torch.randn(4, 5)
    with torch.no_grad():
        assert_same(conv(x, state, mode=mode), cell(x, state))
        assert_same(conv(x, mode=mode), cell(x))
