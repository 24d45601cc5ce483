"""CDLM's pieces on hand-made data: trajectory states rebuild a real teacher decode, the loss masks select exactly
the positions the method describes, and each loss is zero exactly when it should be."""
import math

import pytest
import torch

import cdlm


def test_step_of_and_top_k_rebuild_a_fresh_teacher_decode(tiny_model):
    """Every intermediate state of a one-token-per-step decode follows from (x, step_of) alone."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (3, 4), generator=g)
    states = []
    out = cdlm.generate(tiny_model, prompt, 12, 4, k=1, threshold=None, early_stop=False, record_topk=5,
                        on_step=lambda x, s, pick, logits: states.append(x.clone()))
    assert len(states) == 12
    for step, seen in enumerate(states):
        k = torch.full((3,), step + 1)
        assert torch.equal(cdlm.trajectory_state(out['x'], out['step_of'], 4, k), seen), f'state {step + 1}'
    # the recorded top-k are the teacher's log-probs in the state just before each position was finalized
    for i in range(12):
        before = cdlm.trajectory_state(out['x'], out['step_of'], 4, out['step_of'][:, i])
        want = tiny_model(before)[:, 4 + i].log_softmax(-1).topk(5)
        assert torch.equal(out['top_idx'][:, i], want.indices), f'position {i}'
        assert torch.allclose(out['top_logp'][:, i], want.values, atol=1e-5), f'position {i}'


def test_trajectory_state_by_hand():
    """P=2, L=4. Row 0 finalized its response positions at steps (2, 0, 3, 1), row 1 at (0, 1, 2, 3). State k shows
    position i iff step_of[i] < k; the prompt is always shown. k=0 is the all-masked canvas, k=L the final tokens."""
    M = cdlm.MASK_ID
    x = torch.tensor([[10, 11, 1, 2, 3, 4], [20, 21, 5, 6, 7, 8]])
    step_of = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    got = cdlm.trajectory_state(x, step_of, 2, torch.tensor([2, 0]))
    assert got.tolist() == [[10, 11, M, 2, M, 4], [20, 21, M, M, M, M]], got
    got = cdlm.trajectory_state(x, step_of, 2, torch.tensor([1, 3]))
    assert got.tolist() == [[10, 11, M, 2, M, M], [20, 21, 5, 6, 7, M]], got
    assert torch.equal(cdlm.trajectory_state(x, step_of, 2, torch.tensor([4, 4])), x)


def test_decoded_block_by_hand():
    """L=12, B=4. Row 0 has no EOS (blocks 0-2 decoded), row 1 its first EOS at 4 (blocks 0-1: block 2 is padding),
    row 2 at 0 (block 0 only). u in [0, 1) is spread evenly over each row's decoded blocks."""
    E = cdlm.EOS_ID
    resp = torch.tensor([[7] * 12, [7] * 4 + [E] * 8, [E] * 12])
    for u, want in [(0.0, [0, 0, 0]), (0.4, [1, 0, 0]), (0.6, [1, 1, 0]), (0.99, [2, 1, 0])]:
        got = cdlm.decoded_block(resp, 4, torch.full((3,), u))
        assert got.tolist() == want, (u, got.tolist(), want)


def test_sample_states_selects_the_described_positions():
    P, B = 2, 4
    # one trajectory: response of 3 blocks, EOS from position 6 on (so blocks 0 and 1 are the ones decoded)
    step_of = torch.tensor([[3, 0, 2, 1, 5, 4, 7, 6, 8, 9, 10, 11]])
    x = torch.tensor([[1, 1, 7, 7, 7, 7, 7, 7, cdlm.EOS_ID] + [cdlm.EOS_ID] * 5])
    seen = set()
    for seed in range(200):
        k_y, k_y2, b, U, S = cdlm.sample_states(x, step_of, P, B, torch.Generator().manual_seed(seed))
        b, k_y, k_y2 = b.item(), k_y.item(), k_y2.item()
        seen.add(b)
        assert b * B <= k_y < k_y2 < (b + 1) * B, (b, k_y, k_y2)
        in_block = [b * B <= i < (b + 1) * B for i in range(12)]
        assert U[0].tolist() == [ib and s >= k_y for ib, s in zip(in_block, step_of[0].tolist())]
        assert S[0].tolist() == [ib and s >= k_y2 for ib, s in zip(in_block, step_of[0].tolist())]
        assert S[0].any() and (U[0] >= S[0]).all()  # y' still has a masked position, and fewer than y
    assert seen == {0, 1}, f'blocks sampled: {seen}; block 2 is all padding and never decoded'


@pytest.mark.parametrize('eos_at,blocks', [(None, {0, 1, 2}), (4, {0, 1}), (0, {0})])
def test_sample_states_covers_every_block_and_every_pair_of_states(eos_at, blocks):
    """L=12, B=4, one token per step in order (step_of[i] = i). b runs over the blocks up to the one holding the first
    EOS (all three when there is none); inside block b, (j, j') = (k_y - bB, k_y' - bB) takes every pair
    0 <= j < j' <= B-1 over 300 seeds, and U, S are the block positions with step_of >= k_y, >= k_y'."""
    P, B, L = 2, 4, 12
    step_of = torch.arange(L)[None]
    x = torch.full((1, P + L), 7)
    if eos_at is not None:
        x[0, P + eos_at:] = cdlm.EOS_ID
    seen_b, seen_pairs = set(), set()
    for seed in range(300):
        k_y, k_y2, b, U, S = cdlm.sample_states(x, step_of, P, B, torch.Generator().manual_seed(seed))
        b, k_y, k_y2 = b.item(), k_y.item(), k_y2.item()
        seen_b.add(b)
        seen_pairs.add((k_y - b * B, k_y2 - b * B))
        assert U[0].tolist() == [i // B == b and i >= k_y for i in range(L)], (b, k_y, U)
        assert S[0].tolist() == [i // B == b and i >= k_y2 for i in range(L)], (b, k_y2, S)
    assert seen_b == blocks, f'blocks sampled: {seen_b}, want {blocks}'
    want = {(j, j2) for j in range(B - 1) for j2 in range(j + 1, B)}
    assert seen_pairs == want, f'(j, j\') pairs sampled: {sorted(seen_pairs)}, want {sorted(want)}'


def make_batch(n=4, P=4, L=8, B=4, K=8, seed=1):
    """A hand-made batch in the on-disk format, no decoding needed: random final tokens (row 0 ends in EOS from its
    6th response position), one token per step finalized block after block in a random order inside each block,
    and the top-K log-probs of a random distribution at every position."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, 256, (n, P + L), generator=g)
    x = torch.cat([gt[:, :P], torch.randint(0, 256, (n, L), generator=g)], dim=1)
    x[0, P + 5:] = cdlm.EOS_ID
    step_of = torch.cat([torch.randperm(B, generator=g).repeat(n, 1) + s for s in range(0, L, B)], dim=1)
    top = torch.randn(n, L, cdlm.VOCAB_SIZE - 1, generator=g).mul(3).log_softmax(-1).topk(K)
    return dict(x=x, step_of=step_of.short(), top_idx=top.indices.short(), top_logp=top.values.half(), gt=gt)


def test_cdlm_losses_are_finite_and_respond_to_weights(tiny_model):
    """A weight of 0 skips that term's forward pass and reports it as 0: with w_cons = w_dlm = 0 the model runs once,
    on the N states y alone; with both on, once on [y ; the DLM input] (2N rows) and once on y' (N rows)."""
    batch, shapes = make_batch(), []
    tiny_model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    out = cdlm.cdlm_losses(tiny_model, batch, 4, 4, w_cons=0.5, w_dlm=0.1, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) and v > 0 for v in out.values()), out
    assert sorted(shapes) == [(4, 12), (8, 12)], shapes
    shapes.clear()
    off = cdlm.cdlm_losses(tiny_model, batch, 4, 4, w_cons=0, w_dlm=0, generator=torch.Generator().manual_seed(0))
    assert shapes == [(4, 12)], shapes
    assert off['loss_cons'] == 0 and off['loss_dlm'] == 0 and torch.isclose(off['loss_distill'], out['loss_distill'])
    sum(out.values()).backward()
    assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


def constant_student(probs):
    """A model whose output distribution is `probs` at every position, whatever it reads: the final LayerNorm
    outputs a constant vector e_0, and the LM head maps e_0 to log probs."""
    model = cdlm.Transformer(seq_len=8, n_layer=1, n_head=2, d_model=8)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = probs.log()
    return model


def hand_batch():
    """The by-hand batch of the two tests below, and a student with q(3) = 1/2, q(5) = 1/4 everywhere."""
    probs = torch.full((cdlm.VOCAB_SIZE - 1,), 0.25 / 255)
    probs[3], probs[5] = 0.5, 0.25
    E = cdlm.EOS_ID
    x = torch.tensor([[9, 9, 7, E, E, E], [9, 9, E, E, E, E]])
    step_of = torch.tensor([[1, 0, 2, 3], [0, 1, 2, 3]], dtype=torch.int16)
    top_idx = torch.tensor([[[3, 5], [5, 3], [0, 1], [0, 1]], [[3, 5], [3, 5], [0, 1], [0, 1]]], dtype=torch.int16)
    top_logp = torch.tensor([[[.6, .2], [.3, .3], [.5, .5], [.5, .5]], [[.9, 1e-13], [.25, .25], [.5, .5], [.5, .5]]])
    batch = dict(x=x, step_of=step_of, top_idx=top_idx, top_logp=top_logp.log().half(), gt=x.clone())
    return batch, constant_student(probs)


def test_cdlm_losses_distill_by_hand():
    """The student puts q(3) = 1/2, q(5) = 1/4 and 1/4 spread over the other 255 tokens, at every position.
    P=2, L=4, B=2, and both rows reach EOS inside block 0, so b = 0, y = block 0 all masked (k_y = 0), y' = one
    token shown (k_y' = 1), and U = both block-0 positions of each row. The teacher's stored top-2 log-probs do not
    sum to 1, so the target is their softmax (renormalized over the top K), scattered to their token ids:
      row 0, position 0: ids (3, 5), probs (.6, .2) -> (3/4, 1/4): KL = 3/4 ln(3/4 / 1/2) + 1/4 ln 1 = 3/4 ln 1.5
      row 0, position 1: ids (5, 3), probs (.3, .3) -> (1/2, 1/2): KL = 1/2 ln(1/2 / 1/4) + 1/2 ln 1 = 1/2 ln 2
      row 1, position 0: ids (3, 5), log-probs (ln .9, -30) -> (1, 0): KL = ln 2
      row 1, position 1: ids (3, 5), probs (.25, .25) -> (1/2, 1/2): KL = 1/2 ln 2
    loss_distill = (3/4 ln 1.5 + 2 ln 2) / 4. The student says the same thing in y and y', so loss_cons = 0."""
    batch, student = hand_batch()
    out = cdlm.cdlm_losses(student, batch, 2, 2, w_cons=0.5, w_dlm=0,
                           generator=torch.Generator().manual_seed(0))
    want = (0.75 * math.log(1.5) + 2 * math.log(2)) / 4
    assert abs(out['loss_distill'] - want) < 1e-4, (out['loss_distill'].item(), want)
    assert abs(out['loss_cons']) < 1e-6 and out['loss_dlm'] == 0, out


def test_cdlm_losses_distill_temp_sharpens_the_teacher_by_hand():
    """The batch of the test above with distill_temp=0.5: each stored log-prob is doubled before the softmax, so a
    target is the renormalized square of the top-K probs:
      row 0, position 0: (.6, .2) -> (.36, .04) -> (.9, .1): KL = .9 ln(.9 / .5) + .1 ln(.1 / .25)
      row 0, position 1 and row 1, position 1: equal probs stay (1/2, 1/2): KL = 1/2 ln 2 each
      row 1, position 0: (1, 0) stays: KL = ln 2
    so loss_distill = (.9 ln 1.8 + .1 ln .4 + 2 ln 2) / 4; distill_temp=1 gives the paper's target (the test above)."""
    batch, student = hand_batch()
    out = cdlm.cdlm_losses(student, batch, 2, 2, w_cons=0, w_dlm=0,
                           generator=torch.Generator().manual_seed(0), distill_temp=0.5)
    want = (0.9 * math.log(1.8) + 0.1 * math.log(0.4) + 2 * math.log(2)) / 4
    assert abs(out['loss_distill'] - want) < 1e-4, (out['loss_distill'].item(), want)


def test_cdlm_losses_match_their_formulas(tiny_model):
    """The three losses, written out from the earlier pieces with the same generator draws in the same order
    (sample_states, then the ground truth's own block, then antithetic_t, then mask_block): distillation over U at y
    against the renormalized top-K teacher, consistency over S against the student at y' with no gradient through
    that target, and the DLM loss on the ground truth with its block masked (norm = block_size). Values and parameter
    gradients agree."""
    P, B, batch = 4, 4, make_batch()
    x, step_of, gt, N = batch['x'], batch['step_of'].long(), batch['gt'], 4
    g = torch.Generator().manual_seed(0)
    k_y, k_y2, b, U, S = cdlm.sample_states(x, step_of, P, B, g)
    b_gt = cdlm.decoded_block(gt[:, P:], B, torch.rand(N, generator=g))
    t = cdlm.antithetic_t(N, generator=g)
    xt, hidden = cdlm.mask_block(gt[:, P:], b_gt, B, t, g)
    mask = cdlm.attention_mask('block_causal', 12, P, B)
    q_y = tiny_model(cdlm.trajectory_state(x, step_of, P, k_y), mask)[:, P:]
    q_y2 = tiny_model(cdlm.trajectory_state(x, step_of, P, k_y2), mask)[:, P:].softmax(-1).detach()
    p = torch.zeros(N, 8, cdlm.VOCAB_SIZE - 1).scatter(-1, batch['top_idx'].long(),
                                                       batch['top_logp'].float().softmax(-1))
    want = dict(loss_distill=cdlm.kl_loss(p, q_y, U), loss_cons=cdlm.kl_loss(q_y2, q_y, S),
                loss_dlm=cdlm.mdm_loss(tiny_model(torch.cat([gt[:, :P], xt], 1), mask)[:, P:], gt[:, P:], hidden, t, B))
    sum(want.values()).backward()
    want_grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    got = cdlm.cdlm_losses(tiny_model, batch, P, B, w_cons=0.5, w_dlm=0.1, generator=torch.Generator().manual_seed(0))
    for key in want:
        assert abs(got[key] - want[key]) < 1e-5, (key, got[key].item(), want[key].item())
    sum(got.values()).backward()
    diff = max((p.grad - w).abs().max().item() for p, w in zip(tiny_model.parameters(), want_grads))
    assert diff < 1e-5, f'gradients differ by {diff:.2e}: is the consistency target detached?'


def test_distill_is_zero_when_student_equals_teacher(tiny_model):
    """With attention and MLP outputs switched off, logits depend only on (token, position): the student at y then
    predicts exactly what the teacher predicted at the same still-masked position, and the KL must be 0."""
    with torch.no_grad():
        for block in tiny_model.blocks:
            block.proj.weight.zero_()
            block.mlp[2].weight.zero_()
    g = torch.Generator().manual_seed(1)
    gt = torch.randint(0, 256, (4, 12), generator=g)
    out = cdlm.generate(tiny_model, gt[:, :4], 8, 4, k=1, threshold=None, early_stop=False,
                        record_topk=cdlm.VOCAB_SIZE - 1)
    batch = dict(x=out['x'], step_of=out['step_of'], top_idx=out['top_idx'], top_logp=out['top_logp'], gt=gt)
    res = cdlm.cdlm_losses(tiny_model, batch, 4, 4, w_cons=0.5, w_dlm=0, generator=torch.Generator().manual_seed(0))
    assert res['loss_distill'].abs() < 1e-5, res
    assert res['loss_cons'].abs() < 1e-5, res  # and y, y' agree at every still-masked position


def test_consistency_is_zero_when_y_equals_y_prime_and_positive_otherwise(tiny_model):
    batch = make_batch()
    logits = tiny_model(cdlm.trajectory_state(batch['x'], batch['step_of'].long(), 4, torch.full((4,), 2)))
    sel = torch.ones(4, 12, dtype=torch.bool)
    assert cdlm.kl_loss(logits.softmax(-1).detach(), logits, sel).abs() < 1e-6
    later = tiny_model(cdlm.trajectory_state(batch['x'], batch['step_of'].long(), 4, torch.full((4,), 3)))
    assert cdlm.kl_loss(later.softmax(-1).detach(), logits, sel) > 0


def test_load_split_rows_decode_back_to_the_problems():
    x0, problems = cdlm.load_split('val', 24, 48)
    enc = cdlm.get_tokenizer()
    assert x0.shape == (400, 72) and len(problems) == 400
    for row, (p, r, _) in zip(x0[:50], problems[:50]):
        assert enc.decode([t for t in row[:24].tolist() if t != cdlm.EOS_ID]) == p
        assert cdlm.decode_response(enc, row[24:]) == r


def test_evaluate_scores_what_generate_wrote(tiny_model):
    problems = cdlm.tasks.build_splits()['val'][:2] + cdlm.tasks.build_splits()['val'][-2:]
    model = cdlm.Transformer(seq_len=72, n_layer=1, n_head=2, d_model=16).eval()
    res = cdlm.evaluate(model, problems, 24, 48, 16, 'bidirectional', 'cpu', batch_size=3, k=8, threshold=None,
                        early_stop=False)
    assert len(res['text']) == 4 and res['strict'] == [False] * 4 and res['nfe'] == [6] * 4
    assert 0 < res['seconds'] < 60, res['seconds']  # the decoding calls were timed
    enc = cdlm.get_tokenizer()
    prompt = torch.tensor([cdlm.encode_example(enc, p, '', 24, 48)[:24] for p, _, _ in problems])
    out = cdlm.generate(model, prompt, 48, 16, k=8, threshold=None, early_stop=False)
    assert res['text'] == [cdlm.decode_response(enc, row) for row in out['x'][:, 24:]]


def test_summarize_by_hand():
    problems = [('p', 'r', 'math'), ('p', 'r', 'math'), ('p', 'r', 'code')]
    res = dict(strict=[True, False, True], answer=[True, True, False], nfe=[4, 2, 3], text=['12345', '1', 'abc'])
    f = cdlm.summarize(res, problems, gen_len=48, block_size=4)
    # math: tokens 6 and 2 (EOS included) -> blocks 2 and 1; 6 NFE over 3 blocks; 8 tokens over 6 NFE
    assert f['math'] == dict(acc=0.5, answer_acc=1.0, nfe=3.0, nfe_per_block=2.0, tokens_per_step=8 / 6)
    assert f['code']['acc'] == 1.0 and f['code']['tokens_per_step'] == 4 / 3
