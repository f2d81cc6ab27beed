"""Showing one neuron of a ResNet-18-shaped graph: per-operator queries vs scanning the materialised synapses.

Prints, per neuron, the median time of `neuron_links` (in + out) with the per-operator queries and with the
generic chunked scan (what showing a neuron costs without them: every synapse of every touching connection
is produced and filtered), and their ratio. Both are measured in this run, medians of repeats.
"""

from __future__ import annotations

import torch
from _measure import median_time

from marble_nb import inspect as mi
from marble_nb.ops import Operator

IMAGE = 112  # ResNet-18 layout at 112×112: 430 M synapses, so the scan baseline stays affordable
NEURONS = [("conv1", 28 * 56 + 28), ("layer1.0.conv2", 5 * 28 * 28 + 100), ("layer3.1.add", 300), ("fc", 7)]
REPEATS = 3


def links_both(graph, group: str, index: int) -> int:
    return len(mi.neuron_links(graph, group, index, "in")) + len(mi.neuron_links(graph, group, index, "out"))


class GenericQueries:
    "Temporarily route every operator to the generic chunked scan (the baseline)."

    def __enter__(self):
        self.saved = [(q, dict(q.registry)) for q in (mi.synapses_into, mi.synapses_out_of)]
        for q, reg in self.saved:
            for cls in list(reg):
                if cls is not object and cls is not Operator:
                    q.register(cls, q.registry[Operator] if Operator in reg else q.registry[object])
        return self

    def __exit__(self, *exc):
        for q, reg in self.saved:
            for cls, fn in reg.items():
                q.register(cls, fn)


def main() -> None:
    torch.set_num_threads(2)
    graph = mi.resnet18_graph(image_size=IMAGE)
    print(f"ResNet-18 layout at {IMAGE}×{IMAGE}: {graph.num_neurons():,} neurons, {graph.num_synapses():,} synapses")
    print(f"{'neuron':28s} {'synapses':>9s} {'queries':>10s} {'scan':>10s} {'ratio':>8s}")
    for group, index in NEURONS:
        n = links_both(graph, group, index)
        fast = median_time(lambda: links_both(graph, group, index), REPEATS, warmup=0)  # noqa: B023
        with GenericQueries():
            test_n = links_both(graph, group, index)
            slow = median_time(lambda: links_both(graph, group, index), 1, warmup=0)  # noqa: B023
        if test_n != n:
            raise SystemExit(f"{group}[{index}]: queries found {n} synapses, the scan {test_n}")
        print(f"{group + f'[{index}]':28s} {n:>9,} {fast * 1e3:>8.2f}ms {slow * 1e3:>8.0f}ms {slow / fast:>7.0f}x")


if __name__ == "__main__":
    main()
