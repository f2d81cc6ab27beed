"""Sequence graphs survive a .marble and a .json round trip: same outputs after loading."""

import pytest
import torch
from torch import nn

from marble_nb.control_flow import Argmax, Cond, convert_dynamic
from marble_nb.convert_attention import convert_transformer
from marble_nb.convert_embed import bag_inputs, convert_embedding, convert_embedding_bag
from marble_nb.convert_recurrent import convert_recurrent
from marble_nb.engine import run
from marble_nb.io import load, save


@pytest.fixture(params=[".marble", ".json"])
def suffix(request):
    return request.param


def roundtrip(graph, tmp_path, suffix):
    return load(save(graph, tmp_path / f"g{suffix}"))


def test_embedding_and_bag(tmp_path, suffix):
    torch.manual_seed(0)
    emb = nn.Embedding(9, 3, max_norm=1.0)
    g = convert_embedding(emb, 4)
    ids = torch.randint(0, 9, (2, 4))
    torch.testing.assert_close(run(roundtrip(g, tmp_path, suffix), ids), run(g, ids))
    bag = nn.EmbeddingBag(9, 3, mode="max", padding_idx=0)
    g = convert_embedding_bag(bag, 3)
    inputs = bag_inputs(torch.tensor([[0, 4, 5], [0, 0, 0]]))
    torch.testing.assert_close(run(roundtrip(g, tmp_path, suffix), *inputs), run(g, *inputs))


def test_recurrent_step_graphs(tmp_path, suffix):
    torch.manual_seed(1)
    net = convert_recurrent(nn.LSTM(3, 4, proj_size=2))
    cell = net.cells[0][0]
    again = roundtrip(cell, tmp_path, suffix)
    assert again.metadata["state"] == {"h": "h_new", "c": "c_new"}
    x, h, c = torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 4)
    for got, want in zip(run(again, x, h, c), run(cell, x, h, c), strict=True):
        torch.testing.assert_close(got, want)


def test_transformer_graph(tmp_path, suffix):
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu", norm_first=True)
    conv = convert_transformer(layer)
    x = torch.randn(2, 5, 8)
    want = conv(x)
    (g,) = conv.graphs.values()
    torch.testing.assert_close(run(roundtrip(g, tmp_path, suffix), x), want)


def test_grown_control_flow_graph(tmp_path):
    torch.manual_seed(3)
    moe = Cond(Argmax(nn.Linear(4, 3)), [nn.Linear(4, 2) for _ in range(3)]).eval()
    xs = torch.randn(40, 4)
    with torch.no_grad():
        dyn = convert_dynamic(moe, xs)
    again = roundtrip(dyn.graph, tmp_path, ".marble")
    assert again.metadata["growth"] == dyn.graph.metadata["growth"]
    again.set_outputs(dyn.output)
    torch.testing.assert_close(run(again, xs), dyn(xs))
