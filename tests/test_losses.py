"""Loss invariants: the masked-diffusion ELBO counts only hidden response tokens with weight 1/t, and the KL losses
are zero exactly when the distributions agree, with no gradient into the target."""
import math

import torch

import cdlm


def test_antithetic_t_is_stratified():
    t = cdlm.antithetic_t(8, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert ((t >= 1e-3) & (t < 1)).all()
    bins = ((t - 1e-3) / (1 - 1e-3) * 8).floor().long().sort().values
    assert torch.equal(bins, torch.arange(8)), f'one t per stratum expected, got {t}'


def test_antithetic_t_one_shared_offset_by_hand():
    """eps=0.2, 4 rows: t_i = 0.2 + 0.8 * ((u + i/4) mod 1) for one uniform u, so sorted t are exactly 0.2 apart,
    all in [0.2, 1), and a new u (another seed) moves all of them."""
    ts = [cdlm.antithetic_t(4, eps=0.2, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    for t in ts:
        assert t.shape == (4,) and ((t >= 0.2) & (t < 1)).all(), t
        gaps = t.sort().values.diff()
        assert torch.allclose(gaps, torch.full((3,), 0.2), atol=1e-6), f'sorted t {t.sort().values} not 0.2 apart'
        offsets = ((t - 0.2) / 0.8 - (t[0] - 0.2) / 0.8) % 1  # row i sits i/4 after row 0, modulo 1
        assert torch.allclose(offsets, torch.tensor([0, 0.25, 0.5, 0.75]), atol=1e-5), offsets
    assert not torch.allclose(ts[0], ts[1]), 'the offset u must come from the generator'


def test_mask_tokens_t_zero_hides_nothing_and_t_one_hides_every_maskable_position():
    """The two ends of the noise: t=0 is the clean sequence, t=1 hides exactly the maskable positions (the response)."""
    x0 = torch.arange(12).view(2, 6)
    maskable = torch.tensor([False, False, True, True, True, True])
    xt, hidden = cdlm.mask_tokens(x0, maskable, torch.tensor([0.0, 1.0]), torch.Generator().manual_seed(0))
    M = cdlm.MASK_ID
    assert hidden.tolist() == [[False] * 6, [False, False, True, True, True, True]], hidden
    assert xt.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, M, M, M, M]], xt


def test_mask_tokens_hides_only_maskable_positions_at_rate_t():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (4, 1000))
    maskable = torch.arange(1000) >= 200
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt, hidden = cdlm.mask_tokens(x0, maskable, t, g)
    assert not hidden[:, :200].any() and torch.equal(xt[~hidden], x0[~hidden])
    assert (xt[hidden] == cdlm.MASK_ID).all()
    rate = hidden[:, 200:].float().mean(1)
    assert (rate - t).abs().max() < 0.05, rate


def test_mask_tokens_complement_hides_what_the_first_half_shows():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (3, 8)).repeat(2, 1)  # rows 3.. repeat rows ..3
    maskable = torch.arange(8) >= 2
    xt, hidden = cdlm.mask_tokens(x0, maskable, torch.tensor([0.2, 0.5, 0.9] * 2), g, complement=True)
    assert torch.equal(hidden[3:], maskable & ~hidden[:3]), hidden.int()
    assert torch.equal(hidden[:3] | hidden[3:], maskable.expand(3, 8)) and not (hidden[:3] & hidden[3:]).any()
    assert torch.equal(xt[hidden], torch.full_like(xt[hidden], cdlm.MASK_ID)) and torch.equal(xt[~hidden], x0[~hidden])


def test_mask_block_matches_semi_autoregressive_states():
    """Blocks before b clean, block b hidden at rate t (and scored), later blocks masked but not scored."""
    resp = torch.arange(1, 7).repeat(3, 1)  # (3, 6): blocks of 2
    b, t = torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 0.0])
    xt, hidden = cdlm.mask_block(resp, b, 2, t, torch.Generator().manual_seed(0))
    M = cdlm.MASK_ID
    assert xt.tolist() == [[M, M, M, M, M, M], [1, 2, M, M, M, M], [1, 2, 3, 4, 5, 6]]
    assert hidden.int().tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0] * 6]
    rate = cdlm.mask_block(torch.ones(1, 4000), torch.tensor([0]), 4000, torch.tensor([0.3]))[1].float().mean()
    assert abs(rate - 0.3) < 0.03, rate


def test_mdm_loss_by_hand():
    """Two rows of three positions over a 2-token output, cross-entropies chosen by hand:
    row 0 (t=1/2) hides positions 0 and 2: uniform logits (CE ln 2) and p(target) = 1/4 (CE ln 4);
    row 1 (t=1/4) hides position 1: p(target) = 3/4 (CE ln 4/3). The visible positions have other CEs.
    elbo, norm=5: (ln 2 / (1/2) + ln 4 / (1/2) + ln(4/3) / (1/4)) / (2 rows * 5) = (6 ln 2 + 4 ln 4/3) / 10.
    mean: (ln 2 + ln 4 + ln 4/3) / 3 hidden tokens."""
    l3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [l3, 0.0]],
                           [[0.0, 9.0], [l3, 0.0], [0.0, 2.0]]])
    x0 = torch.tensor([[0, 1, 1], [0, 0, 0]])
    hidden = torch.tensor([[True, False, True], [False, True, False]])
    t = torch.tensor([0.5, 0.25])
    ln2, ln43 = math.log(2), math.log(4 / 3)
    got = cdlm.mdm_loss(logits, x0, hidden, t, 5)
    assert abs(got - (6 * ln2 + 4 * ln43) / 10) < 1e-6, (got.item(), (6 * ln2 + 4 * ln43) / 10)
    got = cdlm.mdm_loss(logits, x0, hidden, t, 5, weight='mean')
    assert abs(got - (3 * ln2 + ln43) / 3) < 1e-6, (got.item(), (3 * ln2 + ln43) / 3)
    for weight in ('elbo', 'mean'):  # nothing hidden: the loss is 0, not NaN
        assert cdlm.mdm_loss(logits, x0, torch.zeros_like(hidden), t, 5, weight=weight) == 0


def test_mdm_loss_ignores_visible_positions():
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, (3, 10))
    hidden = torch.rand(3, 10) < 0.5
    t = torch.tensor([0.3, 0.6, 0.9])
    logits = torch.randn(3, 10, cdlm.VOCAB_SIZE - 1)
    changed = torch.where(hidden[..., None], logits, torch.randn_like(logits))
    a, b = cdlm.mdm_loss(logits, x0, hidden, t, 10), cdlm.mdm_loss(changed, x0, hidden, t, 10)
    assert abs(a - b) < 1e-6, (a, b)
    want = sum(torch.nn.functional.cross_entropy(logits[i, j], x0[i, j]) / t[i]
               for i in range(3) for j in range(10) if hidden[i, j]) / 30
    assert abs(a - want) < 1e-5, (a, want)


def test_mdm_loss_mean_weighs_every_hidden_token_alike():
    """weight='mean': the plain mean cross-entropy over the batch's hidden tokens, whatever t and norm are."""
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, (3, 10))
    hidden = torch.rand(3, 10) < 0.5
    logits = torch.randn(3, 10, cdlm.VOCAB_SIZE - 1)
    t = torch.tensor([0.01, 0.5, 0.9])
    got = cdlm.mdm_loss(logits, x0, hidden, t, 10, weight='mean')
    want = torch.nn.functional.cross_entropy(logits[hidden], x0[hidden])
    assert abs(got - want) < 1e-5, (got, want)
    assert abs(cdlm.mdm_loss(logits, x0, hidden, t * 3, 99, weight='mean') - got) < 1e-6
    assert cdlm.mdm_loss(logits, x0, torch.zeros_like(hidden), t, 10, weight='mean') == 0  # nothing hidden: 0, not NaN


def test_uniform_predictor_scores_log_v_in_expectation():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (4096, 16))
    maskable = torch.ones(16, dtype=torch.bool)
    t = cdlm.antithetic_t(4096, generator=g)
    _, hidden = cdlm.mask_tokens(x0, maskable, t, g)
    loss = cdlm.mdm_loss(torch.zeros(4096, 16, cdlm.VOCAB_SIZE - 1), x0, hidden, t, 16)
    want = math.log(cdlm.VOCAB_SIZE - 1)
    assert abs(loss - want) / want < 0.05, (loss.item(), want)


def test_kl_loss_by_hand():
    """Three positions over 3 tokens, the student given as logits = log q + 7 (softmax removes the shift):
    p = (1/2, 1/2, 0), q = (1/4, 1/4, 1/2): KL = 2 * 1/2 ln 2 = ln 2 (a zero in p contributes 0);
    p = (1, 0, 0),     q = (1/4, 1/4, 1/2): KL = ln 4;
    a third position is not selected. Mean over the two selected: (ln 2 + ln 4) / 2 = 1.5 ln 2."""
    p = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    q = torch.tensor([[[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.9, 0.05, 0.05]]])
    select = torch.tensor([[True, True, False]])
    got = cdlm.kl_loss(p, q.log() + 7, select)
    assert abs(got - 1.5 * math.log(2)) < 1e-6, (got.item(), 1.5 * math.log(2))
    assert cdlm.kl_loss(p, q.log(), torch.zeros_like(select)) == 0  # nothing selected: 0, not NaN


def test_kl_loss_zero_iff_equal_and_no_gradient_into_target():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    p = logits.detach().softmax(-1)
    sel = torch.tensor([True, True, False, True, False])
    assert cdlm.kl_loss(p, logits, sel).abs() < 1e-6
    other = torch.randn(5, 7)
    loss = cdlm.kl_loss(p, other.requires_grad_(), sel)
    want = sum((p[i] * (p[i].log() - other[i].log_softmax(-1))).sum() for i in (0, 1, 3)) / 3
    assert abs(loss - want) < 1e-5 and loss > 0
    loss.backward()
    assert logits.grad is None  # the target was a constant
    assert other.grad[~sel].abs().max() == 0 and other.grad[sel].abs().max() > 0
    sparse = torch.zeros(5, 7)
    sparse[:, 0] = 1.0  # a one-hot target (zeros elsewhere) must not give NaN
    assert torch.isfinite(cdlm.kl_loss(sparse, other, sel))
