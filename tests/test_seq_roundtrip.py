"""Sequence graphs survive a .marble and a .json round trip: same outputs after loading."""

from pathlib import Path

import pytest
import torch
from torch import nn

from marble_nb.control_flow import Argmax, Cond, convert_dynamic
from marble_nb.convert_attention import convert_transformer
from marble_nb.convert_embed import bag_inputs, convert_embedding, convert_embedding_bag
from marble_nb.convert_recurrent import convert_recurrent, load_recurrent, recurrent_from_bundle
from marble_nb.engine import Runner, run, state_inputs
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
    assert again.metadata["recurrent_state"] == {"h": "h_new", "c": "c_new"}
    x, state = torch.randn(2, 3), {"h": torch.randn(2, 2), "c": torch.randn(2, 4)}
    (got_h, got_c), got_state = run(again, x, state=state)
    (want_h, want_c), _ = run(cell, x, state=state)
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_c, want_c)
    assert got_state["h"] is got_h and got_state["c"] is got_c


# Files written by the previous format (commit 665f292, before the cells used the engine's `recurrent_state`):
# tests/data/lstm_stream_v1.marble is `save_recurrent` of this LSTM after streaming x[:, :4], and
# tests/data/gru_step_v1.marble is `io.save` of that GRU's step graph as `engine_step_graph` returned it.
DATA = Path(__file__).parent / "data"


def test_stream_saved_by_previous_format_continues():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True).eval()
    x = torch.randn(2, 7, 3)
    old = load(DATA / "lstm_stream_v1.marble")
    assert "state" in old.metadata["recurrent"]["cells"][0][0]  # really the old layout
    net = load_recurrent(DATA / "lstm_stream_v1.marble")
    assert state_inputs(net.cells[1][0]) == {"h": "h_new", "c": "c_new"}
    with torch.no_grad():
        want_out, (want_h, want_c) = lstm(x)
    torch.testing.assert_close(net.stream(x[:, 4:]), want_out[:, 4:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net.state["c"], want_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x)[1][0], want_h, atol=1e-5, rtol=1e-4)


def test_step_graph_saved_by_previous_format_runs():
    torch.manual_seed(1)
    gru = nn.GRU(3, 4, batch_first=True).eval()
    runner = Runner(load(DATA / "gru_step_v1.marble"))
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        want = gru(x)[0]
    got = torch.stack([runner.step(x[:, t]) for t in range(5)], 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_saved_cell_without_state_map_is_refused(tmp_path):
    bundle = load(DATA / "lstm_stream_v1.marble")
    del bundle.metadata["recurrent"]["cells"][0][0]["state"]
    with pytest.raises(ValueError, match="no state map"):
        recurrent_from_bundle(bundle)


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
