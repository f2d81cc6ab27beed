"""Conversion cost against PyTorch baselines measured in the same run (issue 5).

Prints a table of ratios:
  - convert_model (compact graph) time / torch.save(state_dict) time        goal <= 5
  - dry-run time / one forward pass at batch 1                               goal <= 3
  - peak extra memory of a conversion / parameter bytes                      goal <= 1.5
for an MLP 784-512-512-10, a small CNN and a ResNet-18-shaped network (full width 64).
Peak memory is measured in a fresh process (RSS sampled during the conversion, which includes ShapeProp's
forward pass, minus RSS before) so that earlier work does not hide it.
"""

import io

import torch
from _measure import median_time, peak_rss_growth
from torch import nn

from marble_nb.convert import convert_model
from marble_nb.models import resnet18_shaped

REPEATS = 7


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


def peak_extra_bytes(name: str) -> tuple[int, int]:
    "Peak RSS growth while converting network `name` in a fresh process (after a warm-up), and its parameter bytes."
    setup = (
        "import torch\nfrom convert import make_network\n"
        "from marble_nb.convert import convert_model, load_builtin_converters\nload_builtin_converters()\n"
        "warm = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
        "convert_model(warm, torch.randn(1, 1, 4, 4))  # one-time costs (imports, caches) excluded\n"
        f"model, shape = make_network({name!r})\nx = torch.randn(1, *shape)"
    )
    growth, params = peak_rss_growth(
        setup, "convert_model(model, x)", "sum(p.numel() * p.element_size() for p in model.parameters())"
    )
    return growth, int(params)


def main() -> None:
    rows = []
    for name in NETWORKS:
        model, shape = make_network(name)
        x = torch.randn(1, *shape)
        t_save = median_time(lambda m=model: torch.save(m.state_dict(), io.BytesIO()), REPEATS)
        t_convert = median_time(lambda m=model, x=x: convert_model(m, x), REPEATS)
        with torch.no_grad():
            t_forward = median_time(lambda m=model, x=x: m(x), REPEATS)
        t_dry = median_time(lambda m=model, x=x: convert_model(m, x, dry_run=True), REPEATS)
        extra, params = peak_extra_bytes(name)
        rows.append((name, t_convert / t_save, t_dry / t_forward, extra / params, t_convert, t_save, t_dry, t_forward))
    print(
        f"{'network':10s} {'convert/save':>13s} {'dry-run/fwd':>12s} {'peak mem/params':>16s}   (medians of {REPEATS})"
    )
    for name, r1, r2, r3, *_ in rows:
        print(f"{name:10s} {r1:13.2f} {r2:12.2f} {r3:16.2f}")
    print(f"{'goal':10s} {'<= 5':>13s} {'<= 3':>12s} {'<= 1.5':>16s}")
    for name, *_, tc, ts, td, tf in rows:
        times = f"convert {tc * 1e3:.1f} ms, torch.save {ts * 1e3:.1f} ms, dry run {td * 1e3:.1f} ms"
        print(f"  {name}: {times}, forward {tf * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
