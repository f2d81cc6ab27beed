"""Engine speed and memory against PyTorch, measured in one run (issue 4).

Ratios (medians of repeats):
  - MLP 784-512-512-10, batch 256: compact / PyTorch forward (goal <= 1.5), synapse / PyTorch (goal <= 20)
  - small CNN (Conv 1->8 3x3, ReLU, MaxPool 2, Linear 1352->10), batch 256: compact / PyTorch (goal <= 1.5)
  - random sparse graph, 1M synapses, fan-in 2: synapse-mode throughput (synapses/s) and
    peak memory of a synapse-mode run (batch 1) / the graph's own bytes (goal <= 2)
"""

import torch
from _measure import median_time, peak_rss_growth
from torch import nn

from marble_nb.convert import convert_model
from marble_nb.engine import run
from marble_nb.graph import Graph
from marble_nb.ops import Sparse

torch.set_num_threads(2)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1352, 10)).eval()


def sparse_graph(n_synapses: int = 1 << 20, layers: int = 4, n_in: int = 4096, seed: int = 0) -> Graph:
    "Layers of neurons with exactly two random incoming synapses each (a logic-network shape), as Sparse CSR."
    gen = torch.Generator().manual_seed(seed)
    width = n_synapses // (2 * layers)
    g = Graph("sparse-fan-in-2")
    g.add_input("x", n_in)
    prev, n_prev = "x", n_in
    for i in range(layers):
        name = f"layer{i}"
        g.add_group(name, width, "relu")
        src = torch.randint(0, n_prev, (2 * width,), generator=gen)
        dst = torch.arange(width).repeat_interleave(2)
        g.connect(prev, name, Sparse.from_coo(src, dst, torch.randn(2 * width, generator=gen), width, n_prev))
        prev, n_prev = name, width
    g.set_outputs(prev)
    return g


def model_rows(name: str, model: nn.Module, x: torch.Tensor, synapse_goal: str) -> list[tuple[str, float, str]]:
    "Compact and synapse mode of the converted `model` against its own forward pass, at batch x.shape[0]."
    graph = convert_model(model, x[:1])
    with torch.no_grad():
        t_torch = median_time(lambda: model(x))
        t_compact = median_time(lambda: run(graph, x))
        t_synapse = median_time(lambda: run(graph, x, mode="synapse"), repeats=3)
    return [(f"{name} compact / PyTorch", t_compact / t_torch, "<= 1.5"),
            (f"{name} synapse / PyTorch", t_synapse / t_torch, synapse_goal)]  # fmt: skip


def ratio_rows() -> list[tuple[str, float, str]]:
    return model_rows("MLP", mlp(), torch.randn(256, 784), "<= 20") + model_rows(
        "CNN", cnn(), torch.randn(256, 1, 28, 28), "(report)"
    )


def sparse_rows() -> list[tuple[str, float, str]]:
    g = sparse_graph()
    n = g.num_synapses()
    x = torch.rand(64, g.group("x").size)
    run(g, x, mode="synapse")  # builds and caches the plan
    t = median_time(lambda: run(g, x, mode="synapse"), repeats=5)
    growth, graph_bytes = peak_rss_growth(
        setup="import torch\nfrom engine import sparse_graph\nfrom marble_nb.engine import run\n"
        "g = sparse_graph()\nx = torch.rand(1, g.group('x').size)",
        measured="run(g, x, mode='synapse')",
        reference="g.nbytes()",
    )
    return [
        (f"sparse {n:,} synapses: synapse-mode synapses/s (batch 64)", n * 64 / t, "(report)"),
        ("sparse: peak memory of a synapse run / graph bytes", growth / graph_bytes, "<= 2"),
    ]


def main() -> None:
    rows = ratio_rows() + sparse_rows()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}s} {'value':>12s}  goal")
    for name, value, goal in rows:
        shown = f"{value:12.3g}" if value > 1000 else f"{value:12.2f}"
        print(f"{name:{width}s} {shown}  {goal}")


if __name__ == "__main__":
    main()
