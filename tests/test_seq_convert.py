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
        return self.rnn(x)[0]


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_recurrent_unrolled(cls):
    torch.manual_seed(2)
    model = Recurrent(cls).eval()
    x = torch.randn(2, 6, 3)
    graph = convert_model(model, x)
    with torch.no_grad():
        want = model(x)
    for mode in MODES:
        torch.testing.assert_close(run(graph, x, mode=mode), want, atol=1e-5, rtol=1e-4)


class FinalStateClassifier(nn.Module):
    "Classify a sequence from the recurrent layer's final state, as PyTorch code usually does."

    def __init__(self, cls, batch_first, bidirectional):
        super().__init__()
        self.batch_first, self.bidirectional, self.lstm = batch_first, bidirectional, cls is nn.LSTM
        self.rnn = cls(3, 5, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
        self.fc = nn.Linear(10 if bidirectional else 5, 2)

    def forward(self, x):  # x: (batch, T, 3)
        out, state = self.rnn(x if self.batch_first else x.transpose(0, 1))
        h = state[0] if self.lstm else state  # an LSTM returns (h_n, c_n)
        last = torch.cat((h[-2], h[-1]), dim=1) if self.bidirectional else h[-1]
        first_step = out[:, 0] if self.batch_first else out[0]
        return self.fc(last), first_step


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_final_state_in_convert_model(cls, batch_first, bidirectional):
    torch.manual_seed(7)
    model = FinalStateClassifier(cls, batch_first, bidirectional).eval()
    x = torch.randn(4, 6, 3)
    graph = assert_outputs_match(model, x)
    for mode in MODES:
        report = validate(model, graph, x, mode=mode)
        assert report.passed, report


def assert_outputs_match(model, x):
    "Convert `model` on `x` and check every output against PyTorch in both engine modes; returns the graph."
    graph = convert_model(model, x)
    with torch.no_grad():
        want = model(x)
    for mode in MODES:
        for got, w in zip(run(graph, x, mode=mode), want, strict=True):
            torch.testing.assert_close(got, w, atol=1e-5, rtol=1e-4)
    return graph


class StackedTimeMajor(nn.Module):
    "Two time-major layers, the second reading the first's (T, batch, H) output; (h_n, c_n) returned batch-first."

    def __init__(self):
        super().__init__()
        self.gru, self.lstm = nn.GRU(3, 4), nn.LSTM(4, 2, num_layers=2)

    def forward(self, x):
        out, (h, c) = self.lstm(self.gru(x.transpose(0, 1))[0])
        return out.transpose(0, 1), h.transpose(0, 1), c.permute(1, 0, 2).flatten(1)


def test_time_major_layers_and_state_outputs():
    torch.manual_seed(8)
    assert_outputs_match(StackedTimeMajor().eval(), torch.randn(3, 5, 3))


class Picks(nn.Module):
    def __init__(self, rnn, pick):
        super().__init__()
        self.rnn, self.pick = rnn, pick

    def forward(self, x):
        return self.pick(self.rnn(x))


@pytest.mark.parametrize(
    "rnn, pick, message",
    [
        (nn.LSTM(3, 3, batch_first=True), lambda r: r[1][0], "outputs are batch-first"),  # h_n as it is
        (nn.GRU(3, 3), lambda r: r[0].transpose(0, 1), "whose batch PyTorch would treat as"),  # time-major model input
        (nn.GRU(3, 3, batch_first=True), lambda r: r[1][:, 0], "mixes the samples"),  # h_n[:, 0]: one sample
        (nn.RNN(3, 3, batch_first=True), lambda r: torch.tanh(r[1]), "batch is in dim 1"),  # no layer takes h_n
    ],
)
def test_state_uses_that_cannot_be_converted(rnn, pick, message):
    with pytest.raises(ConversionError, match=message):
        convert_model(Picks(rnn, pick), torch.randn(2, 4, 3))


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
