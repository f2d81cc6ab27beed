"""Per-neuron synapse queries agree with the materialised synapses for any operator configuration (property tests)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marble_nb.inspect import neuron_links, resnet18_graph, synapses_into, synapses_out_of
from marble_nb.ops import Conv, Gather, Operator, Sparse, numel


def _by_neuron(op: Operator, src_shape: tuple, dst_shape: tuple) -> tuple[dict, dict]:
    "Every synapse of `op`, materialised, grouped by target and by source as sorted (src, dst, weight) lists."
    full = op.materialize(src_shape, dst_shape)
    into: dict[int, list] = {i: [] for i in range(numel(dst_shape))}
    out: dict[int, list] = {j: [] for j in range(numel(src_shape))}
    for s, d, w in zip(full.src.tolist(), full.targets().tolist(), full.weight.tolist(), strict=True):
        into[d].append((s, d, round(w, 5)))
        out[s].append((s, d, round(w, 5)))
    return into, out


def _as_list(block) -> list:
    return sorted(
        (s, d, round(w, 5))
        for s, d, w in zip(block.src.tolist(), block.dst.tolist(), block.weight.tolist(), strict=True)
    )


def _check(op: Operator, src_shape: tuple, dst_shape: tuple) -> None:
    into, out = _by_neuron(op, src_shape, dst_shape)
    for i, want in into.items():
        assert _as_list(synapses_into(op, i, src_shape, dst_shape)) == sorted(want), f"into {i}"
    for j, want in out.items():
        assert _as_list(synapses_out_of(op, j, src_shape, dst_shape)) == sorted(want), f"out of {j}"


@st.composite
def conv_case(draw):
    "A random 1-, 2- or 3-d convolution with stride, padding, dilation and groups, and a fitting input shape."
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilation = [draw(st.integers(1, 2)) for _ in range(nd)]
    stride = [draw(st.integers(1, 3)) for _ in range(nd)]
    padding = [draw(st.integers(0, 2)) for _ in range(nd)]
    size = [draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 5)) for k, d in zip(kernel, dilation, strict=True)]
    weight = torch.randn(
        c_out, c_in // groups, *kernel, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
    )
    op = Conv(weight, tuple(stride), tuple(padding), tuple(dilation), groups)
    src_shape = (c_in, *size)
    return op, src_shape, op.output_shape(src_shape)


@settings(max_examples=40, deadline=None)
@given(conv_case())
def test_conv_queries_match_materialised(case):
    _check(*case)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 40), st.integers(0, 999))
def test_sparse_queries_match_materialised(n_src, n_dst, n_syn, seed):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (n_syn,), generator=gen)
    dst = torch.randint(0, n_dst, (n_syn,), generator=gen)
    _check(Sparse.from_coo(src, dst, torch.randn(n_syn, generator=gen), n_dst, n_src), (n_src,), (n_dst,))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10), st.integers(1, 10), st.booleans(), st.integers(0, 999))
def test_gather_queries_match_materialised(n_src, n_dst, shared, seed):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(-1, n_src, (n_dst,), generator=gen)
    weight = torch.tensor(0.5) if shared else torch.randn(n_dst, generator=gen)
    _check(Gather(index, weight), (n_src,), (n_dst,))


def test_every_synapse_of_a_small_resnet_is_found_once():
    "Summed over all neurons, the in-queries and the out-queries each count every synapse of the graph exactly once."
    graph = resnet18_graph(image_size=16, width=2, num_classes=3)
    for group in ("conv1", "layer2.0.add", "avgpool", "fc"):
        n_in = sum(len(neuron_links(graph, group, i, "in")) for i in range(graph.group(group).size))
        assert n_in == sum(graph._count(c) for c in graph.incoming(group))
    for group in ("maxpool", "layer3.1.add"):
        n_out = sum(len(neuron_links(graph, group, i, "out")) for i in range(graph.group(group).size))
        assert n_out == sum(graph._count(c) for c in graph.outgoing(group))
