"""Control flow as dynamic topology: growth happens exactly when a new branch is first reached."""

import logging

import pytest
import torch
from torch import nn

from marble_nb.control_flow import Argmax, Cond, MaxOverLast, Threshold, WhileLoop, convert_dynamic
from marble_nb.engine import MODES


def test_nested_control_flow_grows_once_per_branch(caplog):
    torch.manual_seed(0)
    inner = Cond(Threshold(nn.Linear(5, 1), 0.0), [nn.Linear(5, 2), nn.Sequential(nn.Linear(5, 2), nn.Sigmoid())])
    model = nn.Sequential(
        nn.Linear(3, 5),
        nn.Tanh(),
        Cond(Argmax(nn.Linear(5, 2)), [inner, nn.Linear(5, 2)]),
    ).eval()
    xs = torch.randn(200, 3) * 2
    with torch.no_grad():
        dyn = convert_dynamic(model, xs[:1], "nested")
        first = len(dyn.graph.metadata["growth"])
        with caplog.at_level(logging.INFO, logger="marble_nb"):
            for mode in MODES:
                torch.testing.assert_close(dyn(xs, mode=mode), model(xs), atol=1e-5, rtol=1e-4)
        branches = [g["branch"] for g in dyn.graph.metadata["growth"]]
    assert len(branches) == len(set(branches)) == 4  # outer 0 and 1, inner 0 and 1: each grafted once
    assert first < 4
    assert "first reached" in caplog.text
    counts = (dyn.graph.num_neurons(), dyn.graph.num_synapses())
    with torch.no_grad():
        dyn(xs)
    assert (dyn.graph.num_neurons(), dyn.graph.num_synapses()) == counts


def test_grown_groups_visible_in_summary():
    torch.manual_seed(1)
    head = nn.Linear(4, 3)
    model = Cond(Threshold(nn.Sequential(head, nn.Softmax(-1), MaxOverLast()), 0.99), [nn.Linear(4, 3), head])
    xs = torch.randn(32, 4)
    with torch.no_grad():
        dyn = convert_dynamic(model, xs, "ee")
        rows = {r["group"] for r in dyn.summary().rows}
    assert "ee.branch0.gated" in rows
    grown = [n for n, g in dyn.graph.groups.items() if "grown_at_call" in g.attrs]
    assert grown and all(n in rows for n in grown)


def test_loop_respects_max_iter():
    body = nn.Linear(2, 2)
    with torch.no_grad():
        body.weight.copy_(torch.eye(2))
        body.bias.copy_(torch.tensor([1.0, 0.0]))
    score = nn.Linear(2, 1)
    with torch.no_grad():
        score.weight.copy_(torch.tensor([[0.0, 1.0]]))
        score.bias.zero_()
    loop = WhileLoop(Threshold(score, 0.0), body, max_iter=3)  # loops forever on x[1] > 0: capped at 3
    xs = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    with torch.no_grad():
        dyn = convert_dynamic(loop, xs, "loop")
        torch.testing.assert_close(dyn(xs), loop(xs))
    assert [g["branch"] for g in dyn.graph.metadata["growth"]] == [f"loop iteration {k}" for k in (1, 2, 3)]


def test_threshold_needs_two_branches():
    with pytest.raises(ValueError, match="between 2 branches"):
        convert_dynamic(Cond(Threshold(nn.Linear(2, 1), 0.0), [nn.Linear(2, 2)] * 3), torch.randn(2, 2))
