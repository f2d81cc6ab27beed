"""Embeddings and bags as MARBLE graphs: both engine modes against PyTorch, CPU and CUDA (skipped without it)."""

import pytest
import torch
from torch import nn

from marble_nb.convert_embed import bag_inputs, convert_embedding, convert_embedding_bag
from marble_nb.engine import MODES, run

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kw", [dict(), dict(padding_idx=3), dict(max_norm=0.8), dict(max_norm=1.5, norm_type=3.0, scale_grad_by_freq=True)]
)
def test_embedding_matches_pytorch(device, mode, kw):
    torch.manual_seed(0)
    emb = nn.Embedding(30, 6, **kw).to(device)
    before = emb.weight.detach().clone()
    graph = convert_embedding(emb, (4, 5)).to(device)  # ids shaped (4, 5) per sample
    torch.testing.assert_close(emb.weight.detach(), before)  # conversion leaves the model alone
    ids = torch.randint(0, 30, (3, 4, 5), device=device)
    want = emb(ids).detach()
    torch.testing.assert_close(run(graph, ids, mode=mode), want, atol=1e-6, rtol=1e-5)


def test_embedding_padding_row_and_bad_ids():
    emb = nn.Embedding(5, 3, padding_idx=1)
    graph = convert_embedding(emb, 2)
    out = run(graph, torch.tensor([[1, 1]]))
    assert out.abs().sum() == 0
    with pytest.raises(IndexError, match="0..4"):
        run(graph, torch.tensor([[0, -1]]))
    with pytest.raises(IndexError, match="not an integer"):
        run(graph, torch.tensor([[0.5, 1.0]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bag_mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_bag_offsets(device, mode, bag_mode, padding_idx):
    torch.manual_seed(1)
    bag = nn.EmbeddingBag(12, 5, mode=bag_mode, padding_idx=padding_idx).to(device)
    flat = torch.tensor([2, 2, 7, 1, 11, 0, 2, 5, 6], device=device)
    offsets = torch.tensor([0, 2, 2, 5, 6], device=device)  # an empty bag and a padding-only bag
    graph = convert_embedding_bag(bag, bag_len=5).to(device)
    got = run(graph, *bag_inputs(flat, offsets, bag_len=5), mode=mode)
    torch.testing.assert_close(got, bag(flat, offsets).detach(), atol=1e-6, rtol=1e-5)


def test_embedding_bag_per_sample_weights_and_last_offset():
    torch.manual_seed(2)
    bag = nn.EmbeddingBag(10, 4, mode="sum", include_last_offset=True)
    flat = torch.tensor([1, 2, 3, 4, 5, 6])
    offsets = torch.tensor([0, 1, 4, 6])
    weights = torch.rand(6)
    graph = convert_embedding_bag(bag, bag_len=3)
    for mode in MODES:
        got = run(graph, *bag_inputs(flat, offsets, weights, include_last_offset=True, bag_len=3), mode=mode)
        torch.testing.assert_close(got, bag(flat, offsets, weights).detach(), atol=1e-6, rtol=1e-5)


def test_embedding_bag_too_long():
    with pytest.raises(ValueError, match="bag_len>=4"):
        bag_inputs(torch.arange(4), torch.tensor([0]), bag_len=3)
