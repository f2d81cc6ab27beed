"""Sequence models as MARBLE graphs: compact-mode and synapse-mode time against PyTorch, as ratios.

Measured in one run: in every repeat PyTorch and the graph run back to back on the same inputs (so both
see the same machine load), and the median of the per-repeat ratios is reported:

- LSTM, 2 layers, hidden 128, input 128, sequence 100, batch 32 (`convert_recurrent`): goal for
  compact / PyTorch <= 2.0; synapse / PyTorch reported.
- Transformer encoder, 2 layers, d_model 64, 4 heads, feed-forward 128, sequence 32, batch 32
  (`convert_transformer`): same figures.

For reference, the LSTM is also written by hand as a plain loop of PyTorch kernels (one input projection
per layer for all steps, then per step one matrix product, the gate activations, the cell update with
addcmul, tanh and a product): it shows how close per-step kernels called from Python can come to
PyTorch's LSTM, which runs as one fused oneDNN kernel on CPU. It is a reference, not a goal. (Compact mode
runs each step of a cell graph built by `convert_recurrent` as one block of about that many kernels, see
*One fused step per time step* in nbs/15_convert_recurrent.ipynb; synapse mode passes every message.)

Outputs are checked against PyTorch before timing. Run: `python benchmarks/sequence.py [--repeats 5]
[--synapse-repeats 1] [--threads 1]` (one thread by default: on this shared 2-core machine a
second thread makes both sides swing by several times).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marble_nb.convert_attention import convert_transformer
from marble_nb.convert_recurrent import convert_recurrent


def wall(fn: Callable[[], object]) -> float:
    "Wall time of one call of `fn`."
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratio(reference: Callable[[], object], candidate: Callable[[], object], repeats: int) -> tuple[float, float]:
    "Median PyTorch time and median candidate/PyTorch ratio, the two timed back to back in each repeat."
    reference(), candidate()  # warm-up (and graph building)
    pairs = [(wall(reference), wall(candidate)) for _ in range(repeats)]
    return statistics.median(r for r, _ in pairs), statistics.median(c / r for r, c in pairs)


def lstm_case() -> tuple[str, Callable, Callable, Callable]:
    "The LSTM workload: (name, PyTorch call, compact call, synapse call)."
    torch.manual_seed(0)
    model = nn.LSTM(128, 128, num_layers=2, batch_first=True).eval()
    net = convert_recurrent(model)
    x = torch.randn(32, 100, 128)
    torch.testing.assert_close(net(x)[0], model(x)[0], atol=1e-4, rtol=1e-4)
    return (
        "LSTM 2x128, T=100, B=32",
        lambda: model(x),
        lambda: net(x, mode="compact"),
        lambda: net(x, mode="synapse"),
    )


def lstm_by_hand(model: nn.LSTM, x: Tensor) -> Tensor:
    "The batch-first LSTM's output as a plain loop of PyTorch kernels (the engine's compact path, without a graph)."
    seq = x.transpose(0, 1)
    for k in range(model.num_layers):
        w_ih, w_hh = getattr(model, f"weight_ih_l{k}"), getattr(model, f"weight_hh_l{k}")
        bias = getattr(model, f"bias_ih_l{k}") + getattr(model, f"bias_hh_l{k}")
        steps, batch, n = seq.shape[0], seq.shape[1], model.hidden_size
        projected = F.linear(seq.reshape(steps * batch, -1), w_ih, bias).reshape(steps, batch, -1)
        h, c, outs = seq.new_zeros(batch, n), seq.new_zeros(batch, n), []
        for t in range(steps):
            i, f, g, o = F.linear(h, w_hh, projected[t]).split(n, 1)
            c = torch.addcmul(f.sigmoid() * c, i.sigmoid(), g.tanh())
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        seq = torch.stack(outs)
    return seq.transpose(0, 1)


def transformer_case() -> tuple[str, Callable, Callable, Callable]:
    "The transformer workload: (name, PyTorch call, compact call, synapse call)."
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    conv = convert_transformer(model)
    x = torch.randn(32, 32, 64)
    torch.testing.assert_close(conv(x), model(x), atol=1e-4, rtol=1e-4)
    return (
        "Transformer 2x(d64, 4 heads), T=32, B=32",
        lambda: model(x),
        lambda: conv(x, mode="compact"),
        lambda: conv(x, mode="synapse"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats for PyTorch and compact mode")
    parser.add_argument("--synapse-repeats", type=int, default=1, help="timed repeats for synapse mode (slow)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every candidate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.no_grad():
        for case in (lstm_case, transformer_case):
            name, reference, compact, synapse = case()
            t_ref, r_compact = paired_ratio(reference, compact, args.repeats)
            _, r_synapse = paired_ratio(reference, synapse, args.synapse_repeats)
            rows.append((name, t_ref, r_compact, r_synapse))
        by_hand = hand_written_lstm_ratio(args.repeats)
    print(f"{'workload':42s} {'PyTorch ms':>10s} {'compact/PT':>10s} {'goal':>5s} {'synapse/PT':>10s}")
    for name, t_ref, r_compact, r_synapse in rows:
        verdict = "ok" if r_compact <= 2.0 else "MISS"
        print(f"{name:42s} {t_ref * 1e3:10.1f} {r_compact:10.2f} {verdict:>5s} {r_synapse:10.1f}")
    print(f"reference: the LSTM as a hand-written loop of PyTorch kernels / PyTorch: {by_hand:.2f}")


def hand_written_lstm_ratio(repeats: int) -> float:
    "Median (hand-written kernel loop) / PyTorch time for the LSTM workload, after checking it computes the LSTM."
    torch.manual_seed(0)
    model = nn.LSTM(128, 128, num_layers=2, batch_first=True).eval()
    x = torch.randn(32, 100, 128)
    torch.testing.assert_close(lstm_by_hand(model, x), model(x)[0], atol=1e-4, rtol=1e-4)
    return paired_ratio(lambda: model(x), lambda: lstm_by_hand(model, x), repeats)[1]


if __name__ == "__main__":
    main()
