"""Heavier tests of marble_nb.graph: growth and pruning sequences, bias representations, devices, explicit views."""

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marble_nb.engine import run
from marble_nb.graph import Graph, GraphBuilder, GraphError
from marble_nb.io import load, save


def random_mlp(sizes, seed, bias_neurons=False):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
    b = GraphBuilder("mlp", bias_neurons=bias_neurons)
    h = b.input(sizes[0])
    for i, layer in enumerate(layers):
        h = b.linear(h, layer.weight, layer.bias, activation="relu" if i < len(layers) - 1 else "identity")
    return b.output(h), layers


def reference_mlp(layers, x):
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4), seed=st.integers(0, 10_000))
def test_bias_field_and_bias_neurons_compute_the_same(sizes, seed):
    x = torch.randn(5, sizes[0])
    field, layers = random_mlp(sizes, seed)
    neurons, _ = random_mlp(sizes, seed, bias_neurons=True)
    with torch.no_grad():
        want = reference_mlp(layers, x)
    for mode in ("compact", "synapse"):
        torch.testing.assert_close(run(field, x, mode=mode), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run(neurons, x, mode=mode), want, rtol=1e-5, atol=1e-5)
    assert neurons.num_neurons() == field.num_neurons() + 1
    assert neurons.num_synapses() == field.num_synapses() + sum(sizes[1:])


def test_conv_bias_neurons_match_pytorch():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 7, 7)
    for bias_neurons in (False, True):
        b = GraphBuilder("c", bias_neurons=bias_neurons)
        g = b.output(b.conv2d(b.input((3, 7, 7)), conv.weight, conv.bias, stride=2, padding=1))
        for mode in ("compact", "synapse"):
            torch.testing.assert_close(run(g, x, mode=mode), conv(x).detach(), rtol=1e-5, atol=1e-5)


growth_step = st.one_of(
    st.tuples(st.just("add_neurons"), st.integers(1, 3)),
    st.tuples(st.just("remove_neurons"), st.integers(0, 100)),
    st.tuples(st.just("add_synapses"), st.integers(1, 6)),
    st.tuples(st.just("remove_synapses"), st.integers(1, 6)),
)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(growth_step, min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_growth_and_pruning_keep_counts_and_modes_consistent(steps, seed):
    g, _ = random_mlp([4, 6, 3], seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4)
    for op, n in steps:
        hidden = g.group("linear0").size
        if op == "add_neurons":
            new = g.add_neurons("linear0", n, bias=0.5)
            assert new.tolist() == list(range(hidden, hidden + n))
        elif op == "remove_neurons" and hidden > 1:
            mapping = g.remove_neurons("linear0", [n % hidden])
            assert (mapping == -1).sum() == 1
        elif op == "add_synapses":
            src = torch.randint(0, 4, (n,), generator=gen)
            dst = torch.randint(0, hidden, (n,), generator=gen)
            g.add_synapses("input", "linear0", src, dst, torch.randn(n, generator=gen))
        elif op == "remove_synapses":
            ei, _ = g.edge_index()
            off = g.offsets()
            into_hidden = (ei[1] >= off["linear0"]) & (ei[1] < off["linear0"] + hidden) & (ei[0] < 4)
            pairs = ei[:, into_hidden][:, :n]
            removed = g.remove_synapses("input", "linear0", pairs[0], pairs[1] - off["linear0"])
            assert removed >= min(n, pairs.shape[1]) or pairs.shape[1] == 0
        ei, w = g.edge_index()
        assert ei.shape[1] == g.num_synapses() == sum(r["synapses"] for r in g.summary().rows)
        assert g.num_neurons() == sum(r["neurons"] for r in g.summary().rows)
        assert ei.numel() == 0 or ei.max() < g.num_neurons()  # the neurons add_neurons adds have no synapses
        torch.testing.assert_close(run(g, x, mode="compact"), run(g, x, mode="synapse"), rtol=1e-5, atol=1e-5)
    with tempfile.TemporaryDirectory() as d:  # a grown and pruned graph saves and loads exactly
        again = load(save(g, Path(d) / "grown.marble"))
    (ei, w), (ei2, w2) = g.edge_index(), again.edge_index()
    assert torch.equal(ei, ei2) and torch.equal(w, w2)
    assert torch.equal(run(g, x), run(again, x))


conv_case = st.fixed_dictionaries(
    dict(
        c_in=st.integers(1, 3),
        c_out=st.integers(1, 4),
        k=st.integers(1, 3),
        stride=st.integers(1, 2),
        padding=st.integers(0, 1),
        size=st.integers(3, 6),
        seed=st.integers(0, 1000),
    )
)


@settings(max_examples=25, deadline=None)
@given(case=conv_case)
def test_random_cnn_bias_forms_and_materialized_graph_agree(case):
    torch.manual_seed(case["seed"])
    conv = torch.nn.Conv2d(case["c_in"], case["c_out"], case["k"], stride=case["stride"], padding=case["padding"])
    x = torch.randn(2, case["c_in"], case["size"], case["size"])
    with torch.no_grad():
        feat = torch.relu(conv(x))
        head = torch.nn.Linear(feat[0].numel(), 3)
        want = head(feat.flatten(1))
    outputs = []
    for bias_neurons in (False, True):
        b = GraphBuilder("cnn", bias_neurons=bias_neurons)
        src = b.input(tuple(x.shape[1:]))
        c = b.conv2d(src, conv.weight, conv.bias, stride=case["stride"], padding=case["padding"], activation="relu")
        g = b.output(b.linear(c, head.weight, head.bias))
        explicit = g.materialize()
        assert explicit.num_synapses() == g.num_synapses()
        assert all(conn.op.src.dtype == torch.int32 for conn in explicit.connections)
        for graph, mode in ((g, "compact"), (g, "synapse"), (explicit, "synapse"), (explicit, "compact")):
            out = run(graph, x, mode=mode)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
            outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[4], rtol=1e-5, atol=1e-5)  # bias field vs bias neurons


def test_materialize_and_dtype_and_device():
    g, layers = random_mlp([6, 5, 2], 0)
    x = torch.randn(4, 6, dtype=torch.float64)
    explicit = g.materialize()
    assert all(type(c.op).__name__ == "Sparse" for c in explicit.connections)
    assert explicit.num_synapses() == g.num_synapses()
    g64 = g.copy().to(dtype=torch.float64)
    assert all(c.op.weight.dtype == torch.float64 for c in g64.connections)
    with torch.no_grad():
        want = reference_mlp([layer.double() for layer in layers], x)
    torch.testing.assert_close(run(g64, x), want)
    torch.testing.assert_close(run(explicit.to(dtype=torch.float64), x, mode="synapse"), want)
    if torch.cuda.is_available():
        gc = g.copy().to("cuda")
        torch.testing.assert_close(run(gc, x.float().cuda()).cpu(), run(g, x.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_both_modes_on_cuda():
    g, layers = random_mlp([8, 8, 3], 1)
    g.to("cuda")
    x = torch.randn(4, 8, device="cuda")
    torch.testing.assert_close(run(g, x, mode="synapse"), run(g, x, mode="compact"), rtol=1e-5, atol=1e-5)


def test_structural_errors_name_the_problem():
    g = Graph()
    g.add_input("x", 2)
    g.add_group("a", 2)
    g.add_group("b", 2)
    from marble_nb.ops import Dense

    g.connect("x", "a", Dense(torch.eye(2)))
    g.connect("a", "b", Dense(torch.eye(2)))
    g.connect("b", "a", Dense(torch.eye(2)))
    with pytest.raises(GraphError, match=r"\['a', 'b'\] form a cycle"):
        g.levels()
    with pytest.raises(GraphError, match="has 1 input slot"):
        g.connect("x", "b", Dense(torch.eye(2)), slot=1)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.0, 0.9), st.integers(0, 10_000))
def test_zero_weights_are_synapses_until_pruned(n_src, n_dst, zero_fraction, seed):
    "Counts, materialisation, the summary and `mean` neurons (both modes) agree that a zero weight is a synapse."
    from marble_nb.ops import Dense

    torch.manual_seed(seed)
    weight = torch.randn(n_dst, n_src)
    weight[torch.rand(n_dst, n_src) < zero_fraction] = 0.0
    g = Graph("zeros")
    g.add_input("x", n_src)
    g.add_group("m", n_dst, "mean")
    g.connect("x", "m", Dense(weight))
    g.set_outputs("m")
    x = torch.randn(4, n_src)

    def check(stored: torch.Tensor) -> None:
        "`stored[i, j]`: whether synapse j -> i exists; the mean divides by each target's stored synapses."
        n = int(stored.sum())
        assert g.num_synapses() == g.summary().totals["synapses"] == g.materialize().num_synapses() == n
        degree = stored.sum(1).clamp_min(1)
        want = (x @ (weight * stored).T) / degree
        for mode in ("compact", "synapse"):
            torch.testing.assert_close(run(g, x, mode=mode), want)

    check(torch.ones_like(weight, dtype=torch.bool))  # all stored entries, zeros included
    zeros = int((weight == 0).sum())
    assert g.prune_synapses() == zeros
    check(weight != 0)  # pruned: only the non-zero weights remain, and the means follow
    assert g.prune_synapses() == 0
