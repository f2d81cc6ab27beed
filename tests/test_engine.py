"""Property tests of marble_nb.engine: random graphs against a plain reference, both modes, devices."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marble_nb import engine
from marble_nb.convert_embed import Rearrange
from marble_nb.engine import MODES, Runner, run, run_all, set_state
from marble_nb.graph import Graph
from marble_nb.kinds import get_kind
from marble_nb.ops import Dense, Gather, Sparse

KINDS = ["identity", "relu", "sigmoid", "tanh", "max", "min", "prod", "mean", "logic"]
IDENTITY = {"sum": 0.0, "mean": 0.0, "max": -math.inf, "min": math.inf, "prod": 1.0}


def random_graph(draw, n_groups: int) -> Graph:
    g = Graph("random")
    g.add_input("x", draw(st.integers(1, 5)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    for i in range(n_groups):
        kind = draw(st.sampled_from(KINDS))
        size = draw(st.integers(1, 5))
        name = f"g{i}"
        params = {"gate": torch.randint(0, 16, (size,), generator=gen)} if kind == "logic" else {}
        bias = torch.randn(size, generator=gen) if get_kind(kind).has_bias and draw(st.booleans()) else None
        g.add_group(name, size, kind, bias=bias, params=params)
        earlier = list(g.groups)[:-1]
        for slot in range(get_kind(kind).slots):
            for _ in range(draw(st.integers(1, 2))):
                src = draw(st.sampled_from(earlier))
                n_src = g.groups[src].size
                op_type = draw(st.sampled_from(["dense", "sparse", "gather"]))
                if op_type == "dense":
                    op = Dense(torch.randn(size, n_src, generator=gen) * 0.7)
                elif op_type == "sparse":
                    e = draw(st.integers(0, 8))
                    op = Sparse.from_coo(
                        torch.randint(0, n_src, (e,), generator=gen),
                        torch.randint(0, size, (e,), generator=gen),
                        torch.randn(e, generator=gen) * 0.7,
                        size,
                        n_src,
                    )
                else:
                    op = Gather(
                        torch.randint(-1, n_src, (size,), generator=gen), torch.randn(size, generator=gen) * 0.7
                    )
                g.connect(src, name, op, slot)
    g.set_outputs(*[n for n in g.groups if n != "x"])
    return g


def reference(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    "Plain evaluation: Python loops over neurons and their explicit synapses, nothing vectorised."
    offsets = graph.offsets()
    values = {"x": x}
    synapses = {}
    for block in graph.synapses():
        for s, d, w in zip(block.src.tolist(), block.dst.tolist(), block.weight.tolist(), strict=True):
            synapses.setdefault(d, []).append((s, w, block.slot))
    flat = lambda name: values[name].reshape(x.shape[0], -1)
    owner = {}
    for name, g in graph.groups.items():
        for i in range(g.size):
            owner[offsets[name] + i] = (name, i)
    for level in graph.levels():
        for name in level:
            if name in values:
                continue
            g, kind = graph.groups[name], get_kind(graph.groups[name].kind)
            pre = torch.zeros(x.shape[0], g.size, kind.slots, dtype=x.dtype)
            for i in range(g.size):
                incoming = synapses.get(offsets[name] + i, [])
                for slot in range(kind.slots):
                    msgs = [flat(owner[s][0])[:, owner[s][1]] * w for s, w, sl in incoming if sl == slot]
                    if kind.slots > 1 or kind.aggregate == "sum":
                        pre[:, i, slot] = sum(msgs) if msgs else 0.0
                    elif not msgs:
                        pre[:, i, slot] = IDENTITY[kind.aggregate]
                    elif kind.aggregate == "mean":
                        pre[:, i, slot] = sum(msgs) / len(msgs)
                    else:
                        reduce = {"max": torch.maximum, "min": torch.minimum, "prod": torch.mul}[kind.aggregate]
                        acc = msgs[0]
                        for m in msgs[1:]:
                            acc = reduce(acc, m)
                        pre[:, i, slot] = acc
            pre = pre if kind.slots > 1 else pre[..., 0]
            if g.bias is not None:
                pre = pre + g.bias
            values[name] = kind.activation(pre, g)
    return values


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_graphs_match_a_plain_reference_in_both_modes(data):
    graph = random_graph(data.draw, data.draw(st.integers(1, 4)))
    x = torch.rand(3, graph.groups["x"].size, dtype=torch.float64)
    graph.to(dtype=torch.float64)
    want = reference(graph, x)
    for mode in MODES:
        got = run_all(graph, x, mode=mode)
        for name in graph.outputs:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_modes_agree_in_float32(data):
    graph = random_graph(data.draw, data.draw(st.integers(1, 6)))
    x = torch.rand(4, graph.groups["x"].size)
    a, b = run_all(graph, x, mode="compact"), run_all(graph, x, mode="synapse")
    for name in graph.outputs:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, equal_nan=True)


def tanh_rnn(seed: int, readout: bool) -> tuple[Graph, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A 2-input, 3-unit tanh RNN cell whose state `h_prev` carries `h`, with a 1-unit linear readout `y` as its
    output when `readout` (else `h` is the output); returns the graph and its input, recurrent and readout weights."""
    torch.manual_seed(seed)
    g = Graph("rnn")
    g.add_input("x", 2)
    g.add_input("h_prev", 3)
    g.add_group("h", 3, "tanh", bias=torch.randn(3))
    w_x, w_h = torch.randn(3, 2), torch.randn(3, 3)
    w_y = torch.randn(1, 3) if readout else None
    g.connect("x", "h", Dense(w_x))
    g.connect("h_prev", "h", Dense(w_h))
    if readout:
        g.add_group("y", 1)
        g.connect("h", "y", Dense(w_y))
    g.set_outputs("y" if readout else "h")
    set_state(g, {"h_prev": "h"})
    return g, w_x, w_h, w_y


def test_recurrent_stepping_equals_unrolled_computation():
    g, w_x, w_h, w_y = tanh_rnn(seed=0, readout=True)
    seq = torch.randn(4, 6, 2)
    h, unrolled = torch.zeros(4, 3), []
    for t in range(6):
        h = torch.tanh(seq[:, t] @ w_x.T + h @ w_h.T + g.group("h").bias)
        unrolled.append(h @ w_y.T)
    for mode in MODES:
        runner = Runner(g, mode=mode)
        stepped = [runner.step(seq[:, t]) for t in range(6)]
        torch.testing.assert_close(torch.stack(stepped, 1), torch.stack(unrolled, 1), rtol=1e-5, atol=1e-5)
        out, state = run(g, seq[:, 0], mode=mode)
        torch.testing.assert_close(state["h_prev"], torch.tanh(seq[:, 0] @ w_x.T + g.group("h").bias))


def test_growth_between_runs_changes_outputs_exactly():
    g = Graph("grow")
    g.add_input("x", 3)
    g.add_group("y", 2)
    g.connect("x", "y", Dense(torch.ones(2, 3)))
    g.set_outputs("y")
    x = torch.randn(5, 3)
    before = {m: run(g, x, mode=m) for m in MODES}
    g.add_synapses("x", "y", [1, 2], [0, 0], [0.5, -2.0])
    for m in MODES:
        after = run(g, x, mode=m)
        torch.testing.assert_close(after[:, 0] - before[m][:, 0], 0.5 * x[:, 1] - 2.0 * x[:, 2])
        torch.testing.assert_close(after[:, 1], before[m][:, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    torch.manual_seed(0)
    g = Graph("dev")
    g.add_input("x", 8)
    g.add_group("h", 6, "relu")
    g.connect("x", "h", Dense(torch.randn(6, 8)))
    g.set_outputs("h")
    x = torch.randn(3, 8)
    cpu = run(g, x, mode="synapse")
    g.to("cuda")
    torch.testing.assert_close(run(g, x.cuda(), mode="synapse").cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_plans_read_weights_at_call_time():
    "A kept plan sees weights changed in place (an optimiser step) or replaced (graph.to), not stale copies."
    torch.manual_seed(1)
    g = Graph("trained")
    g.add_input("x", 4)
    g.add_group("h", 3, "tanh", bias=torch.zeros(3))
    g.connect("x", "h", Dense(torch.randn(3, 4)))
    g.set_outputs("h")
    x = torch.randn(5, 4)
    module = g.to_module()
    optimiser = torch.optim.SGD(module.parameters(), lr=0.5)
    module(x).sum().backward()
    optimiser.step()
    with torch.no_grad():
        weight, bias = (getattr(module, k) for k in ("connections_0_weight", "groups_1_bias"))
        torch.testing.assert_close(module(x), torch.tanh(x @ weight.T + bias))
    run(g, x)  # the plan of `g` itself is kept ...
    g.to(dtype=torch.float64)  # ... and follows the new tensors
    want = torch.tanh(x.double() @ g.connections[0].op.weight.T + g.group("h").bias)
    torch.testing.assert_close(run(g, x.double()), want)


def test_runner_scan_equals_steps():
    g, *_ = tanh_rnn(seed=2, readout=False)
    seq = torch.randn(7, 4, 2)  # time-major
    for mode in MODES:
        stepper, scanner = Runner(g, mode=mode), Runner(g, mode=mode)
        steps = [stepper.step(seq[t]) for t in range(7)]
        torch.testing.assert_close(torch.stack(scanner.scan(seq)), torch.stack(steps))
        torch.testing.assert_close(scanner.state["h_prev"], stepper.state["h_prev"])


def chain(*names):
    "x -> names[0] -> names[1] -> ...: tanh groups of 3 joined by random dense weights; outputs the last."
    torch.manual_seed(3)
    g = Graph("chain")
    g.add_input("x", 3)
    for src, dst in zip(("x", *names), names, strict=False):
        g.add_group(dst, 3, "tanh")
        g.connect(src, dst, Dense(torch.randn(3, 3)))
    g.set_outputs(names[-1])
    return g


def tanh_of(graph, values, src, dst):
    "The value of tanh group `dst` computed from `src` as the graph says (one dense connection)."
    (conn,) = [c for c in graph.incoming(dst) if c.src == src]
    return torch.tanh(values[src] @ conn.op.weight.T)


def block_over(graph, groups, results, calls):
    "A block computing the tanh chain `groups` (each fed by the one before, the first by its own source)."
    first_src = next((c.src for c in graph.incoming(groups[0])), None)  # (an input has none)

    def step(values, batch, chunk):
        calls.append(tuple(groups))
        local = dict(values)
        for src, dst in zip((first_src, *groups), groups, strict=False):
            local[dst] = tanh_of(graph, local, src, dst)
        return tuple(local[n] for n in results)

    return engine.Block(tuple(groups), tuple(results), step)


def block_steps(graph):
    return [name for name, _ in engine._plan(graph, "compact", True).steps]


def test_block_replaces_its_groups_and_gives_the_same_answer(monkeypatch):
    g, calls = chain("a", "b", "c"), []
    want = run_all(g, x := torch.randn(4, 3))["c"]
    monkeypatch.setattr(engine, "BLOCK_FUSIONS", [lambda graph: [block_over(graph, ["a", "b"], ["b"], calls)]])
    torch.testing.assert_close(run(g, x), want)
    assert block_steps(g) == [("b",), "c"] and calls == [("a", "b")]
    torch.testing.assert_close(run_all(g, x)["c"], want)  # every group: no block
    torch.testing.assert_close(run(g, x, mode="synapse"), want)
    assert calls == [("a", "b")]


@pytest.mark.parametrize(
    "groups,results,outputs",
    [
        (["a", "b"], ["b"], ["c", "a"]),  # a is an output, but not among the results
        (["b", "c"], ["c"], ["c"]),  # b is read by d, outside
        (["a", "b"], ["x"], ["c"]),  # a result outside the block
        (["x", "a"], ["a"], ["c"]),  # an input
    ],
)
def test_unusable_blocks_leave_the_plan_unfused(monkeypatch, groups, results, outputs):
    g, calls = chain("a", "b", "c"), []
    g.add_group("d", 3, "tanh")
    g.connect("b", "d", Dense(torch.randn(3, 3)))
    g.set_outputs(*outputs)
    x = torch.randn(2, 3)
    want = run_all(g, x)
    monkeypatch.setattr(engine, "BLOCK_FUSIONS", [lambda graph: [block_over(graph, groups, results, calls)]])
    got = run(g, x)
    for name, value in zip(outputs, got if len(outputs) > 1 else [got], strict=True):
        torch.testing.assert_close(value, want[name])
    assert all(isinstance(n, str) for n in block_steps(g)) and calls == []


def test_block_must_run_before_every_outside_reader(monkeypatch):
    "Members a and c with b (outside) between them: the block would run at c's level, after b needs a."
    g, calls = chain("a", "b", "c"), []
    g.set_outputs("c")
    monkeypatch.setattr(engine, "BLOCK_FUSIONS", [lambda graph: [block_over(graph, ["a", "c"], ["a", "c"], calls)]])
    x = torch.randn(2, 3)
    torch.testing.assert_close(run(g, x), run_all(g, x)["c"])
    assert calls == [] and block_steps(g) == ["a", "b", "c"]


def test_overlapping_blocks_first_wins_and_connection_fusions_stay_out(monkeypatch):
    "Of two blocks sharing a group only the first is used; a product read only by a block member is kept for it."
    g, calls = chain("a", "b", "c"), []
    g.add_group("p", 3, "prod")  # p = a·a, read only by b: the product fusion would add it into b's sum
    g.connect("a", "p", Rearrange.identity(3))
    g.connect("a", "p", Rearrange.identity(3))
    g.connect("p", "b", Rearrange.identity(3))
    x = torch.randn(2, 3)
    want = run_all(g, x)["c"]

    def with_p(graph):
        "b from a and p, as one block over b and c."
        (wa,) = (c.op.weight for c in graph.incoming("b") if c.src == "a")

        def step(values, batch, chunk):
            calls.append("bc")
            b = torch.tanh(values["a"] @ wa.T + values["p"])
            return (tanh_of(graph, {"b": b}, "b", "c"),)

        return [engine.Block(("b", "c"), ("c",), step), block_over(graph, ["c"], ["c"], calls)]

    monkeypatch.setattr(engine, "BLOCK_FUSIONS", [with_p])
    torch.testing.assert_close(run(g, x), want)
    assert block_steps(g) == ["a", "p", ("c",)] and calls == ["bc"]
