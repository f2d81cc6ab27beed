"""Sequence layers and control flow through `convert_model`, checked with `validate` and both engine modes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import marble_nb.control_flow  # noqa: F401  (registers Cond / WhileLoop)
import marble_nb.convert_attention  # noqa: F401  (registers attention and transformer modules, SDPA)
import marble_nb.convert_recurrent  # noqa: F401  (registers RNN / LSTM / GRU)
from marble_nb.control_flow import Argmax, Cond
from marble_nb.convert import ConversionError, convert_model, supported_layers
from marble_nb.engine import MODES, run
from marble_nb.validate import validate


class Encoder(nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        self.embed = nn.Embedding(16, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids, pad):
        return self.encoder(self.embed(ids), src_key_padding_mask=pad)


@pytest.mark.parametrize("norm_first", [False, True])
def test_embedding_transformer_with_padding(norm_first):
    torch.manual_seed(0)
    model = Encoder(norm_first).eval()
    ids = torch.randint(0, 16, (3, 7))
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    graph = convert_model(model, (ids, pad))
    for mode in MODES:
        report = validate(model, graph, (ids, pad), mode=mode)
        assert report.passed, report


class Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(11, 3, mode="sum", padding_idx=0)

    def forward(self, ids, weights):
        return self.bag(ids, per_sample_weights=weights)


def test_embedding_bag_with_weights():
    torch.manual_seed(1)
    model = Lookup()
    ids, weights = torch.randint(0, 11, (4, 5)), torch.rand(4, 5)
    graph = convert_model(model, (ids, weights))
    for mode in MODES:
        torch.testing.assert_close(run(graph, ids, weights, mode=mode), model(ids, weights).detach())


class Recurrent(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(3, 4, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_recurrent_unrolled(cls):
    torch.manual_seed(2)
    model = Recurrent(cls).eval()
    x = torch.randn(2, 6, 3)
    graph = convert_model(model, x)
    with torch.no_grad():
        want = model(x)[0]
    for mode in MODES:
        torch.testing.assert_close(run(graph, x, mode=mode), want, atol=1e-5, rtol=1e-4)


class Attend(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool).tril())


def test_sdpa_with_constant_mask():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    model = Attend()
    graph = convert_model(model, (q, k, v))
    for mode in MODES:
        torch.testing.assert_close(run(graph, q, k, v, mode=mode), model(q, k, v), atol=1e-5, rtol=1e-4)


def test_router_in_convert_model():
    torch.manual_seed(4)
    moe = nn.Sequential(Cond(Argmax(nn.Linear(4, 3)), [nn.Linear(4, 2) for _ in range(3)])).eval()
    x = torch.randn(16, 4)
    graph = convert_model(moe, x)
    with torch.no_grad():
        for mode in MODES:
            torch.testing.assert_close(run(graph, x, mode=mode), moe(x), atol=1e-5, rtol=1e-4)


def test_inventory_and_layout_errors():
    layers = supported_layers()["modules"]
    for name in ("Embedding", "EmbeddingBag", "LSTM", "GRU", "RNN", "MultiheadAttention", "Transformer", "Cond"):
        assert name in layers
    assert "torch.nn.functional.scaled_dot_product_attention" in supported_layers()["functions"]
    with pytest.raises(ConversionError, match="batch_first=True"):
        convert_model(nn.Sequential(nn.GRU(3, 3)), torch.randn(2, 3, 3))


class Mixed(nn.Module):
    "Embedding -> LSTM -> self-attention -> mean over time -> linear head: every sequence family in one model."

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        x = self.lstm(self.embed(ids))[0]
        x = self.attn(x, x, x, need_weights=False)[0]
        return self.head(x.mean(1))


def test_whole_sequence_model():
    torch.manual_seed(5)
    model = Mixed().eval()
    ids = torch.randint(0, 10, (3, 6))
    graph = convert_model(model, ids)
    for mode in MODES:
        report = validate(model, graph, ids, mode=mode)
        assert report.passed, report


def test_early_exit_classifier_in_convert_model():
    torch.manual_seed(6)
    from marble_nb.control_flow import MaxOverLast, Threshold

    head = nn.Linear(8, 3)
    model = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        Cond(Threshold(nn.Sequential(head, nn.Softmax(-1), MaxOverLast()), 0.5), [nn.Linear(8, 3), head]),
    ).eval()
    x = torch.randn(32, 4) * 3
    graph = convert_model(model, x)
    with torch.no_grad():
        for mode in MODES:
            torch.testing.assert_close(run(graph, x, mode=mode), model(x), atol=1e-5, rtol=1e-4)
