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
