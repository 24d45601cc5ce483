"""The attention mask as a hand-checkable matrix, and what each mask lets the model see (perturbation tests)."""
import pytest
import torch

import cdlm


def test_attention_mask_block_causal_by_hand():
    want = torch.tensor([  # P=2, B=2, seq_len=7: prompt, block 0, block 1, and the first position of block 2
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    got = cdlm.attention_mask('block_causal', 7, prompt_len=2, block_size=2)
    assert torch.equal(got, want), f'\n{got.int()}'
    assert cdlm.attention_mask('bidirectional', 3).all()
    assert torch.equal(cdlm.attention_mask('causal', 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())


def test_attention_mask_block_size_one_is_causal_over_the_response():
    got = cdlm.attention_mask('block_causal', 6, prompt_len=2, block_size=1)
    tril = torch.ones(6, 6).tril().bool()
    tril[:2, :2] = True  # the prompt still sees itself bidirectionally
    assert torch.equal(got, tril), f'\n{got.int()}'


def test_attention_mask_needs_explicit_sizes():
    with pytest.raises(ValueError, match='prompt_len and block_size'):
        cdlm.attention_mask('block_causal', 8, prompt_len=2)
    with pytest.raises(ValueError, match='unknown'):
        cdlm.attention_mask('sliding', 8)


@pytest.mark.parametrize('T,P,B', [(9, 3, 2), (8, 0, 3), (6, 6, 4), (10, 1, 4)])
def test_attention_mask_matches_the_formula_entry_by_entry(T, P, B):
    """The README's block-causal rule written out with Python ints:
    allow(q, k) = k < P or (q >= P and k >= P and blk(k) <= blk(q)).
    The sizes include no prompt, no response, and a last block cut short."""
    def blk(i):
        return (i - P) // B
    want = torch.tensor([[k < P or (q >= P and k >= P and blk(k) <= blk(q)) for k in range(T)] for q in range(T)])
    got = cdlm.attention_mask('block_causal', T, prompt_len=P, block_size=B)
    assert got.dtype == torch.bool and torch.equal(got, want), f'\ngot\n{got.int()}\nwant\n{want.int()}'


def test_output_never_predicts_mask_and_has_no_shift(tiny_model):
    x = torch.randint(0, 256, (2, 10))
    logits = tiny_model(x)
    assert logits.shape == (2, 10, cdlm.VOCAB_SIZE - 1)  # one row short: <|mask|> has no output


def test_bidirectional_logits_see_later_tokens(tiny_model):
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 11] = (y[0, 11] + 1) % 256
    diff = (tiny_model(x) - tiny_model(y))[0, :11].abs().amax(-1)
    assert (diff > 1e-6).all(), f'a later token did not reach some earlier position: {diff}'


@pytest.mark.parametrize('P,B', [(4, 4), (3, 2), (5, 1)])
def test_block_causal_logits_ignore_later_blocks(tiny_model, P, B):
    T = P + 4 * B
    mask = cdlm.attention_mask('block_causal', T, P, B)
    x = torch.randint(0, 256, (1, T))
    base = tiny_model(x, mask)
    for b in range(4):
        s, e = P + b * B, P + (b + 1) * B
        y = x.clone()
        y[0, s] = (y[0, s] + 1) % 256  # change one token in block b
        d = (tiny_model(y, mask) - base)[0].abs().amax(-1)
        assert d[:s].max() < 1e-6, f'block {b} leaked into earlier positions: max diff {d[:s].max():.2e}'
        assert (d[s:e] > 1e-6).all(), f'block {b} is not bidirectional inside: {d[s:e]}'
        assert (d[e:] > 1e-6).all(), f'block {b} does not reach later blocks: {d[e:]}'


def test_rope_scores_depend_only_on_the_offset():
    cos, sin = cdlm.rope_table(16, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def score(i, j):
        return (cdlm.apply_rope(q, cos[i], sin[i]) * cdlm.apply_rope(k, cos[j], sin[j])).sum()

    assert torch.allclose(cdlm.apply_rope(q, cos[0], sin[0]), q), 'position 0 must be the identity'
    assert torch.allclose(cdlm.apply_rope(q, cos[5], sin[5]).norm(), q.norm()), 'a rotation keeps the norm'
    assert abs(score(3, 1) - score(12, 10)) < 1e-5, (score(3, 1), score(12, 10))
    assert abs(score(3, 1) - score(3, 2)) > 1e-3, 'different offsets should give different scores'


@pytest.mark.parametrize('masked', [False, True])
def test_attend_matches_softmax_attention_in_fp32_and_under_cpu_bf16(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    mask = (torch.rand(5, 5, generator=g) < 0.5) | torch.eye(5, dtype=torch.bool) if masked else None
    scores = q.double() @ k.double().transpose(-2, -1) / 8 ** 0.5
    if masked:
        scores = scores.masked_fill(~mask, float('-inf'))
    want = scores.softmax(-1) @ v.double()
    assert torch.allclose(cdlm.attend(q, k, v, mask).double(), want, atol=1e-5)  # fp32: PyTorch's fused kernel
    with torch.autocast('cpu', dtype=torch.bfloat16):  # the explicit form, whatever this CPU's bf16 speed
        y = cdlm.attend(q, k, v, mask)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.double(), want, atol=3e-2)
