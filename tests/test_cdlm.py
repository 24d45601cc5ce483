"""CDLM's pieces on hand-made data: trajectory states rebuild a real teacher decode, the loss masks select exactly
the positions the method describes, and each loss is zero exactly when it should be."""
import torch

import cdlm


def test_trajectory_states_rebuild_a_fresh_teacher_decode(tiny_model):
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


def make_batch(model, n=4, P=4, L=8, B=4):
    g = torch.Generator().manual_seed(1)
    gt = torch.randint(0, 256, (n, P + L), generator=g)
    out = cdlm.generate(model, gt[:, :P], L, B, k=1, threshold=None, early_stop=False, record_topk=8)
    return dict(x=out['x'], step_of=out['step_of'].short(), top_idx=out['top_idx'].short(),
                top_logp=out['top_logp'].half(), gt=gt)


def test_cdlm_losses_are_finite_and_respond_to_weights(tiny_model):
    batch = make_batch(tiny_model)
    out = cdlm.cdlm_losses(tiny_model, batch, 4, 4, w_cons=0.5, w_dlm=0.1, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) and v > 0 for v in out.values()), out
    off = cdlm.cdlm_losses(tiny_model, batch, 4, 4, w_cons=0, w_dlm=0, generator=torch.Generator().manual_seed(0))
    assert off['loss_cons'] == 0 and off['loss_dlm'] == 0 and torch.isclose(off['loss_distill'], out['loss_distill'])
    sum(out.values()).backward()
    assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


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
    batch = make_batch(tiny_model)
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
