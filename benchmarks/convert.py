"""Conversion cost against PyTorch baselines measured in the same run (issue 5).

Prints a table of ratios:
  - convert_model (compact graph) time / torch.save(state_dict) time        goal <= 5
  - dry-run time / one forward pass at batch 1                               goal <= 3
  - peak extra memory of a conversion / parameter bytes                      goal <= 1.5
for an MLP 784-512-512-10, a small CNN and a ResNet-18-shaped network (full width 64, 64x64 input).

How it measures, and why:
  - Times are medians of REPEATS calls after a warm-up call, all in one process, with PyTorch on ONE thread;
    each ratio's two sides are timed in turns (one call of each per round), so load changes hit both alike.
    On the 2 shared cores of this machine, 2 OpenMP threads make a batch-1 forward of the CNN take 16-24 ms
    instead of 0.05-0.1 ms whenever another process holds a core (the threads wait for each other at every
    kernel), which made every ratio meaningless (and met the dry-run goal by accident). One thread is also
    what a batch-1 forward pass uses well. The forward pass and torch.save are measured under the same setting.
  - What the dry run does differs by network, as convert_model decides: the MLP and the CNN are plain
    nn.Sequential chains whose layers all have shape rules, so their dry run runs no layer at all (shapes by
    PyTorch's output-size formulas, see marble_nb.convert_layers); the ResNet is traced by torch.fx and its dry
    run runs its forward pass once, node by node, to measure shapes.
  - Peak memory is measured in a fresh process: RSS sampled every 0.5 ms during the conversion, minus RSS
    before it. One-time costs are excluded by warming up first: the imports, one conversion of a tiny model
    (the converter's own first-use costs), and ONE FORWARD PASS OF THE MODEL ITSELF. The last one matters for
    small models: a process's first forward pass of a model costs PyTorch memory of its own (kernel caches,
    allocator pools) — 4.3 MB for the CNN, 79x its 56 kB of weights, and the same with or without conversion —
    and conversion runs the model once to measure shapes. That cost belongs to running the model, which the
    user has done anyway, not to conversion. The `cold` column shows the figure without that warm-up.
"""

import io

import torch
from _measure import median_times, peak_rss_growth
from torch import nn

from marble_nb.convert import convert_model
from marble_nb.models import resnet18_shaped

REPEATS = 21


def make_network(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    "One benchmark network (eval mode) and its per-sample input shape."
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        ).eval(), (784,)
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1352, 10)
        ).eval(), (
            1,
            28,
            28,
        )
    return resnet18_shaped((3, 64, 64), classes=1000, width=64).eval(), (3, 64, 64)


NETWORKS = ("mlp", "cnn", "resnet18")


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    "The baseline of the dry run: one inference forward pass."
    return model(x)


def peak_extra_bytes(name: str, run_model_first: bool = True) -> tuple[int, int]:
    "Peak RSS growth converting network `name` in a fresh process (after the warm-ups above), and its parameter bytes."
    setup = (
        "import torch\ntorch.set_num_threads(1)\nfrom convert import make_network\n"
        "from marble_nb.convert import convert_model, load_builtin_converters\nload_builtin_converters()\n"
        "warm = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
        "convert_model(warm, torch.randn(1, 1, 4, 4))  # the converter's one-time costs (imports, caches)\n"
        f"model, shape = make_network({name!r})\nx = torch.randn(1, *shape)\n"
        + ("with torch.no_grad():\n    model(x)  # the model's own first-forward costs\n" if run_model_first else "")
    )
    growth, params = peak_rss_growth(
        setup, "convert_model(model, x)", "sum(p.numel() * p.element_size() for p in model.parameters())"
    )
    return growth, int(params)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name in NETWORKS:
        model, shape = make_network(name)
        x = torch.randn(1, *shape)
        t_save, t_convert = median_times(
            [lambda m=model: torch.save(m.state_dict(), io.BytesIO()), lambda m=model, x=x: convert_model(m, x)],
            REPEATS,
        )
        t_forward, t_dry = median_times(
            [lambda m=model, x=x: forward(m, x), lambda m=model, x=x: convert_model(m, x, dry_run=True)], REPEATS
        )
        extra, params = peak_extra_bytes(name)
        cold, _ = peak_extra_bytes(name, run_model_first=False)
        rows.append(
            (name, t_convert / t_save, t_dry / t_forward, extra / params, cold / params, t_convert, t_save, t_dry,
             t_forward)
        )  # fmt: skip
    print(
        f"{'network':10s} {'convert/save':>13s} {'dry-run/fwd':>12s} {'peak mem/params':>16s} {'(cold)':>8s}"
        f"   (medians of {REPEATS}, 1 thread)"
    )
    for name, r1, r2, r3, r4, *_ in rows:
        print(f"{name:10s} {r1:13.2f} {r2:12.2f} {r3:16.2f} {r4:8.2f}")
    print(f"{'goal':10s} {'<= 5':>13s} {'<= 3':>12s} {'<= 1.5':>16s}")
    for name, *_, tc, ts, td, tf in rows:
        times = f"convert {tc * 1e3:.2f} ms, torch.save {ts * 1e3:.2f} ms, dry run {td * 1e3:.2f} ms"
        print(f"  {name}: {times}, forward {tf * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
