"""Bit-packed inference: identical predictions to the eval-mode float network, both backends."""

from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import marble_nb.logic as logic
import marble_nb.logic_compile as lc
from marble_nb.engine import run
from marble_nb.logic import GroupSum, LogicConv2d, LogicLayer, OrPool2d
from marble_nb.logic_compile import compile_logic, count_bits, find_c_compiler, pack_bits, unpack_bits

BACKENDS = ["torch"] + (["c"] if find_c_compiler() else [])


def random_net(widths: list[int], k: int | None, tau: float, seed: int) -> nn.Sequential:
    "An eval-mode logic network with random logits (every gate type occurs) and an optional GroupSum."
    torch.manual_seed(seed)
    layers = [LogicLayer(i, o, seed=seed + n) for n, (i, o) in enumerate(pairwise(widths))]
    for layer in layers:
        nn.init.normal_(layer.weights, std=3.0)
    head = [GroupSum(k, tau)] if k else []
    return nn.Sequential(nn.Flatten(), *layers, *head).eval()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    in_dim=st.integers(1, 50),
    hidden=st.lists(st.integers(1, 60), min_size=0, max_size=3),
    k=st.sampled_from([None, 1, 2, 3, 10]),
    per_class=st.integers(1, 40),
    n=st.integers(1, 700),
    tau=st.sampled_from([1.0, 3.0, 0.7]),
    seed=st.integers(0, 1000),
)
def test_packed_equals_float_eval(backend, in_dim, hidden, k, per_class, n, tau, seed):
    widths = [in_dim]
    for h in hidden:  # every layer must be able to read all of its inputs
        widths.append(max(h, (widths[-1] + 1) // 2))
    last = (k or 1) * max(per_class, -(-widths[-1] // (2 * (k or 1))))
    net = random_net(widths + [last], k, tau, seed)
    x = torch.rand(n, in_dim) < torch.rand(1)
    expected = net(x.float())
    compiled = compile_logic(net, backend=backend)
    assert torch.equal(compiled(x), expected)
    assert torch.equal(compiled(x.to(torch.uint8)), expected)
    assert torch.equal(compiled(x.float()), expected)
    assert torch.equal(compiled.run_words(pack_bits(x), n), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_classes_count_exactly(backend):
    "Counts above 255 and groups that are not multiples of 16 rows exercise every adder level."
    net = random_net([64, 3000, 2 * 1234], k=2, tau=1.0, seed=3)
    x = torch.rand(300, 64) < 0.5
    assert torch.equal(compile_logic(net, backend=backend)(x), net(x.float()))


def test_pack_unpack_round_trip_and_counts():
    x = torch.rand(1000, 37) < 0.3
    words = pack_bits(x)
    assert words.shape == (37, 16)
    assert torch.equal(unpack_bits(words, 1000), x)
    rows = torch.rand(5 * 33, 200) < 0.5
    assert torch.equal(count_bits(pack_bits(rows.t()), 5, 200), rows.view(5, 33, 200).sum(1).t())


def test_no_compiler_falls_back_cleanly(monkeypatch):
    for module in (lc, logic):  # logic_compile uses marble_nb.logic's compiler helpers
        monkeypatch.setattr(module, "find_c_compiler", lambda: None)
    net = random_net([10, 12], k=2, tau=1.0, seed=0)
    assert compile_logic(net).backend == "torch"
    with pytest.raises(RuntimeError, match="no C compiler"):
        compile_logic(net, backend="c")


@pytest.mark.skipif(not find_c_compiler(), reason="needs a C compiler")
def test_c_kernel_builds_into_fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MARBLE_NB_CACHE", str(tmp_path))
    net = random_net([20, 30, 40], k=4, tau=2.0, seed=1)
    x = torch.rand(130, 20) < 0.5
    assert torch.equal(compile_logic(net, backend="c")(x), net(x.float()))
    assert len(list((tmp_path / "logic_c").glob("*.so"))) == 1


def test_bad_inputs_are_refused():
    compiled = compile_logic(random_net([8, 10], k=2, tau=1.0, seed=0), backend="torch")
    with pytest.raises(ValueError, match="binary inputs"):
        compiled(torch.full((4, 8), 0.5))
    with pytest.raises(ValueError, match="int64 words"):
        compiled.run_words(torch.zeros(8, 1, dtype=torch.int32), 10)
    with pytest.raises(TypeError, match="cannot compile"):
        compile_logic(nn.Sequential(LogicLayer(4, 4), nn.Linear(4, 2)))


@pytest.mark.parametrize("mode", ["compact", "synapse"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), tau=st.sampled_from([1.0, 3.0, 0.3, 8.0]), n=st.integers(1, 300))
def test_marble_graph_predicts_like_the_network(mode, seed, tau, n):
    net = random_net([24, 40, 30, 30], k=3, tau=tau, seed=seed)
    graph = lc.logic_to_marble(net)
    x = (torch.rand(n, 24) < 0.5).float()
    expected = net(x)
    scores = run(graph, x, mode=mode)
    assert torch.equal(scores.argmax(-1), expected.argmax(-1))  # ties broken alike: counts are exact
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    assert graph.num_synapses() == 2 * (40 + 30 + 30) + 30 + 3


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 3),
    out_channels=st.integers(1, 5),
    kernel=st.integers(1, 3),
    depth=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    pool=st.sampled_from([None, (2, 0), (3, 1), (2, 1)]),
    seed=st.integers(0, 1000),
)
def test_conv_networks_compile_and_convert_exactly(
    backend, channels, out_channels, kernel, depth, stride, padding, pool, seed
):
    torch.manual_seed(seed)
    conv = LogicConv2d(channels, out_channels, kernel, depth, stride, padding, seed=seed)
    nn.init.normal_(conv.weights, std=3.0)
    modules = [conv] + ([OrPool2d(pool[0], padding=pool[1])] if pool else [])
    body = nn.Sequential(*modules, nn.Flatten()).eval()
    x = torch.rand(70, channels, 7, 6) < 0.5
    expected = body(x.float())
    assert torch.equal(compile_logic(body, backend=backend, input_shape=(channels, 7, 6))(x), expected)
    graph = lc.logic_to_marble(body, input_shape=(channels, 7, 6))
    assert torch.equal(run(graph, x.float(), mode="synapse").flatten(1), expected)


def test_trained_difflogicnet_on_event_frames_compiles_and_converts():
    """marble_nb.models.DiffLogicNet as the training job makes it: binary (T=1, 2, 34, 34) frames give identical
    outputs compiled and as a MARBLE graph; frames in [0, 1] that are not binary are refused by compile_logic
    (it has no bit for 0.5), while the graph computes the same relaxation of the hard gates as the network."""
    from marble_nb.models import DiffLogicNet

    torch.manual_seed(0)
    net = DiffLogicNet((2, 34, 34), 10, depth=2, width=1200, tau=8.0)
    frames = (torch.rand(130, 1, 2, 34, 34) < 0.2).float()
    labels = torch.randint(0, 10, (130,))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(3):  # a few training steps, so the gates are no longer the initial ones
        opt.zero_grad()
        nn.functional.cross_entropy(net(frames), labels).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        expected = net(frames)
    for backend in BACKENDS:
        assert torch.equal(compile_logic(net, backend=backend)(frames), expected)
    graph = lc.logic_to_marble(net, input_shape=(1, 2, 34, 34))
    assert torch.equal(run(graph, frames, mode="synapse"), expected)  # tau = 8: scores exact
    soft = torch.rand(20, 1, 2, 34, 34)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="threshold first"):
            compile_logic(net, backend=backend)(soft)
    with torch.no_grad():
        torch.testing.assert_close(run(graph, soft, mode="synapse"), net(soft), atol=1e-4, rtol=1e-5)


def test_convert_model_converts_difflogicnet_like_logic_to_marble(tmp_path):
    """The registry entries: convert_model on a DiffLogicNet validates in both modes, predicts exactly like the
    network, survives a .marble round trip, and has the same logic groups as logic_to_marble's graph."""
    from marble_nb.convert import convert_model
    from marble_nb.io import load, save
    from marble_nb.models import DiffLogicNet
    from marble_nb.validate import validate

    net = DiffLogicNet((3, 2, 10, 10), 10, depth=3, width=400, tau=8.0, seed=3).eval()
    frames = (torch.rand(70, 3, 2, 10, 10) < 0.3).float()
    graph = convert_model(net, frames[:1])
    for mode in ("compact", "synapse"):
        assert validate(net, graph, frames, mode=mode).passed
        assert torch.equal(run(graph, frames, mode=mode), net(frames))  # tau = 8: scores exact
    back = load(save(graph, tmp_path / "difflogic.marble"))
    assert torch.equal(run(back, frames, mode="synapse"), net(frames))

    def gates(g):
        return [group.params["gate"] for group in g.groups.values() if group.kind == "logic"]

    converted, direct = gates(graph), gates(lc.logic_to_marble(net))
    assert len(converted) == 3 and all(torch.equal(a, b) for a, b in zip(converted, direct, strict=True))
