"""Memory and file speed of a MARBLE graph against PyTorch, for an MLP 784-512-512-10 (issue 3).

Prints, as ratios measured in this run:
  - bytes of the explicit graph (every synapse stored, CSR) / bytes of the PyTorch parameters   goal <= 3.0
  - bytes of the compact graph (weight matrices)               / bytes of the PyTorch parameters   goal <= 1.1
  - save + load time of the graph (.marble)  / torch.save + torch.load of the state_dict          goal <= 2.0
"""

import tempfile
from pathlib import Path

import torch
from _measure import median_times

from marble_nb.graph import GraphBuilder
from marble_nb.io import load, save

REPEATS = 15


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )


def mlp_graph(model: torch.nn.Sequential):
    b = GraphBuilder("mlp")
    h = b.input(784)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        h = b.linear(h, layer.weight, layer.bias, activation="relu" if i < len(linears) - 1 else "identity")
    return b.output(h)


def main() -> None:
    model = mlp()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    graph = mlp_graph(model)
    explicit = graph.materialize()
    rows = [
        ("explicit graph bytes / parameter bytes", explicit.nbytes() / param_bytes, 3.0),
        ("compact graph bytes / parameter bytes", graph.nbytes() / param_bytes, 1.1),
    ]
    with tempfile.TemporaryDirectory() as d:
        pt, mb = Path(d) / "mlp.pt", Path(d) / "mlp.marble"

        def torch_round_trip():
            torch.save(model.state_dict(), pt)
            torch.load(pt, weights_only=True)

        def marble_round_trip():
            save(graph, mb)
            load(mb)

        t_torch, t_marble = median_times([torch_round_trip, marble_round_trip], REPEATS)  # in turns, as elsewhere
    rows.append(("save+load .marble / torch.save+torch.load", t_marble / t_torch, 2.0))
    print(f"MLP 784-512-512-10: {graph.num_synapses():,} synapses, {param_bytes:,} parameter bytes")
    print(f"explicit graph {explicit.nbytes():,} B, compact graph {graph.nbytes():,} B")
    print(f"median save+load: marble {t_marble * 1e3:.1f} ms, torch {t_torch * 1e3:.1f} ms ({REPEATS} repeats)")
    print(f"{'measure':45s} {'ratio':>7s} {'goal':>6s}")
    for name, ratio, goal in rows:
        print(f"{name:45s} {ratio:7.2f} {'<=' + str(goal):>6s} {'ok' if ratio <= goal else 'MISSED'}")


if __name__ == "__main__":
    main()
