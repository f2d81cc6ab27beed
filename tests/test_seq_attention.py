"""Attention and transformers as MARBLE graphs: modules, masks, lengths, a tiny causal LM; both engine modes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marble_nb.convert_attention import (
    add_attention,
    add_encoder,
    add_linear,
    add_positional,
    add_rotary,
    causal_mask,
    convert_multihead_attention,
    convert_transformer,
    sinusoidal_table,
)
from marble_nb.convert_embed import add_embedding
from marble_nb.engine import MODES, run
from marble_nb.graph import Graph

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("is_causal,scale", [(False, None), (True, 0.3)])
def test_scaled_dot_product_attention(mode, is_causal, scale):
    torch.manual_seed(0)
    b, t, h, d = 3, 6, 4, 5
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    g = Graph("sdpa")
    for name in "qkv":
        g.add_input(name, (t, h * d))
    mask = causal_mask(t, t) if is_causal else None
    g.set_outputs(add_attention(g, "q", "k", "v", h, "attn", scale=scale, mask=mask).out)
    flat = [x.transpose(1, 2).reshape(b, t, h * d) for x in (q, k, v)]
    got = run(g, *flat, mode=mode).reshape(b, t, h, d).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_multihead_cross_attention_with_masks(device, mode):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(12, 3, batch_first=True, kdim=7, vdim=5).eval().to(device)
    conv = convert_multihead_attention(mha)
    q, k, v = (
        torch.randn(2, 4, 12, device=device),
        torch.randn(2, 6, 7, device=device),
        torch.randn(2, 6, 5, device=device),
    )
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2], device=device)
    mask = torch.rand(4, 6, device=device) > 0.8
    with torch.no_grad():
        want = mha(q, k, v, key_padding_mask=pad, attn_mask=mask, average_attn_weights=False)
    got = conv(q, k, v, key_padding_mask=pad, attn_mask=mask, average_attn_weights=False, mode=mode)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_first", [False, True])
def test_small_transformer_encoder_any_length(device, norm_first):
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=norm_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval().to(device)
    conv = convert_transformer(model)
    for length in (5, 11):
        x = torch.randn(2, length, 64, device=device)
        with torch.no_grad():
            want = model(x)
        for mode in MODES:
            torch.testing.assert_close(conv(x, mode=mode), want, atol=1e-4, rtol=1e-4)
    assert len(conv.graphs) == 2


def test_transformer_decoder_and_full():
    torch.manual_seed(3)
    full = nn.Transformer(16, 2, 1, 2, 32, dropout=0.0, activation="gelu").eval()
    conv = convert_transformer(full)
    src, tgt = torch.randn(7, 2, 16), torch.randn(5, 2, 16)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    with torch.no_grad():
        want = full(src, tgt, tgt_mask=tgt_mask, memory_key_padding_mask=pad)
    for mode in MODES:
        got = conv(src, tgt, tgt_mask=tgt_mask, memory_key_padding_mask=pad, mode=mode)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


class TinyCausalLM(nn.Module):
    "Token embedding + sinusoidal positions + causal 2-layer encoder + vocabulary head."

    def __init__(self, vocab=30, d=32, heads=4, max_len=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.register_buffer("pos", sinusoidal_table(max_len, d))
        layer = nn.TransformerEncoderLayer(d, heads, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.encoder(self.embed(ids) + self.pos[:t], mask=mask, is_causal=True))


def causal_lm_graph(model, length):
    g = Graph(f"lm[T={length}]")
    g.add_input("ids", length)
    h = add_positional(g, add_embedding(g, "ids", model.embed), model.pos, "pos")
    h = add_encoder(g, h, model.encoder, "encoder", mask=causal_mask(length, length))
    g.set_outputs(add_linear(g, h, model.head.weight, model.head.bias, "head"))
    return g


@pytest.mark.parametrize("length", [8, 13])
def test_tiny_causal_language_model(length):
    torch.manual_seed(4)
    model = TinyCausalLM().eval()
    ids = torch.randint(0, 30, (3, length))
    with torch.no_grad():
        want = model(ids)
    g = causal_lm_graph(model, length)
    for mode in MODES:
        torch.testing.assert_close(run(g, ids, mode=mode), want, atol=1e-4, rtol=1e-4)
    # causality: changing the last token changes only the last position's logits
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 30
    diff = (run(g, ids2) - run(g, ids)).abs().amax(-1)
    assert bool((diff[:, :-1] < 1e-6).all()) and bool((diff[:, -1] > 0).all())


def test_too_long_for_positions():
    model = TinyCausalLM(max_len=8)
    with pytest.raises(ValueError, match="at most 8 positions"):
        causal_lm_graph(model, 9)


def test_rotary_rejects_odd_heads():
    g = Graph("r")
    g.add_input("q", (3, 6))
    with pytest.raises(ValueError, match="even head size"):
        add_rotary(g, "q", heads=2, name="rope")
