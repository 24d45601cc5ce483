"""Decoder invariants on tiny random models: the prompt is kept, steps finalize exactly what the rule says, nothing
stays masked, greedy is deterministic, early stop works, and the cached student decodes exactly like the uncached one."""
import math
import random

import pytest
import torch

import cdlm


def run(model, P=6, L=12, B=4, batch=3, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 256, (batch, P), generator=g)
    steps = []
    out = cdlm.generate(model, prompt, L, B, generator=g, on_step=lambda x, s, pick, logits: steps.append(
        (x.clone(), pick.clone(), logits.clone())), **kw)
    return prompt, out, steps


def test_predict_greedy_and_sampled():
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]])
    tokens, conf = cdlm.predict(logits)
    assert tokens.tolist() == [[1, 0]]
    assert torch.allclose(conf, logits.softmax(-1).amax(-1).double())
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([cdlm.predict(logits.expand(1000, 2, 3), 1.0, g)[0] for _ in range(4)])
    freq = (draws[..., 0] == 1).float().mean()
    assert abs(freq - logits[0, 0].softmax(-1)[1]) < 0.03, freq  # Gumbel-max samples follow softmax


def test_choose_positions_rules():
    conf = torch.tensor([[0.95, 0.5, 0.92, 0.3], [0.1, 0.2, 0.3, 0.4]])
    todo = torch.tensor([[True, True, True, True], [True, True, True, False]])
    assert cdlm.choose_positions(conf, todo, threshold=0.9).tolist() == [[1, 0, 1, 0], [0, 0, 1, 0]]
    assert cdlm.choose_positions(conf, todo, k=2).tolist() == [[1, 0, 1, 0], [0, 1, 1, 0]]
    assert cdlm.choose_positions(conf, todo, threshold=1.0).sum(-1).tolist() == [1, 1]
    assert cdlm.choose_positions(conf, todo, threshold=0.0).tolist() == todo.tolist()


def test_predict_by_hand():
    """Greedy: position 0 has probs (1/5, 3/5, 1/5) -> token 1, confidence 0.6; position 1 has (1/2, 1/8, 3/8) ->
    token 0, confidence 0.5, in float64. Sampled from logits (0, ln 3): token 1 has probability 3/4 at temperature 1,
    9/10 at temperature 1/2 (probs ** 2, renormalized) and about 0.634 at temperature 2; the confidence is always the
    untempered probability of the drawn token (3/4 or 1/4), and a generator seeded alike draws alike."""
    l3, l4 = math.log(3), math.log(4)
    tokens, conf = cdlm.predict(torch.tensor([[[0.0, l3, 0.0], [l4, 0.0, l3]]]))
    assert tokens.tolist() == [[1, 0]] and conf.dtype == torch.float64, (tokens, conf)
    assert torch.allclose(conf, torch.tensor([[0.6, 0.5]], dtype=torch.float64)), conf
    logits = torch.tensor([[[0.0, l3]]]).expand(4000, 1, 2)
    for temperature, want in [(1.0, 0.75), (0.5, 0.9), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))]:
        tokens, conf = cdlm.predict(logits, temperature, torch.Generator().manual_seed(0))
        freq = tokens.double().mean().item()
        assert abs(freq - want) < 0.03, f'temperature {temperature}: token 1 drawn {freq:.3f} of the time, want {want}'
        want_conf = torch.where(tokens == 1, 0.75, 0.25).double()
        assert torch.allclose(conf, want_conf, atol=1e-6), 'the confidence must be the untempered probability'
        again = cdlm.predict(logits, temperature, torch.Generator().manual_seed(0))[0]
        assert torch.equal(tokens, again), 'same generator seed, different draws'


def test_choose_positions_threshold_is_strict_by_hand():
    """threshold=0.5 over confidences (0.5, 0.75, 0.5, 0.25): only 0.75 is strictly above. At threshold=1.0 with two
    confidences of exactly 1.0, one position only (the best one, no position exceeds 1). The best one is taken among
    the still-masked positions (0.99 is already final here). With both k and threshold given, threshold rules."""
    todo = torch.ones(1, 4, dtype=torch.bool)
    got = cdlm.choose_positions(torch.tensor([[0.5, 0.75, 0.5, 0.25]]), todo, threshold=0.5)
    assert got.tolist() == [[False, True, False, False]], got
    got = cdlm.choose_positions(torch.tensor([[1.0, 1.0, 0.25, 0.5]]), todo, threshold=1.0)
    assert got.sum() == 1 and got[0, :2].any(), got
    got = cdlm.choose_positions(torch.tensor([[0.99, 0.2, 0.3, 0.1]]), torch.tensor([[False, True, True, True]]),
                                threshold=0.9)
    assert got.tolist() == [[False, False, True, False]], got
    got = cdlm.choose_positions(torch.tensor([[0.95, 0.92, 0.3, 0.1]]), todo, k=1, threshold=0.9)
    assert got.tolist() == [[True, True, False, False]], got


def test_choose_positions_k_by_hand():
    """k most confident among the still-masked positions (confidences 0.9, 0.8, 0.7, 0.6): k=1 with position 0 final
    takes position 1; k=3 with only two positions masked takes just those two; k=10 over 4 positions takes all."""
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    got = cdlm.choose_positions(conf, torch.tensor([[False, True, True, False]]), k=1)
    assert got.tolist() == [[False, True, False, False]], got
    todo = torch.tensor([[True, False, True, False]])
    assert cdlm.choose_positions(conf, todo, k=3).tolist() == todo.tolist()
    assert cdlm.choose_positions(conf, torch.ones(1, 4, dtype=torch.bool), k=10).all()


@pytest.mark.parametrize('attn', ['bidirectional', 'block_causal'])
@pytest.mark.parametrize('k', [1, 3])
def test_k_per_step_invariants(tiny_model, attn, k):
    prompt, out, steps = run(tiny_model, attn=attn, k=k, early_stop=False)
    P, x = prompt.shape[1], out['x']
    assert torch.equal(x[:, :P], prompt), 'the prompt was overwritten'
    assert not (x == cdlm.MASK_ID).any(), 'masks left after decoding'
    for i, (_, pick, _) in enumerate(steps):  # blocks of 4: k=1 -> 4 steps a block, k=3 -> 3 then 1
        want = 1 if k == 1 else (3 if i % 2 == 0 else 1)
        assert (pick.sum(-1) == want).all(), f'step {i}: {pick.sum(-1).tolist()} tokens, want {want}'
    assert (out['nfe'] == len(steps)).all()
    assert sorted(out['step_of'][0].tolist()) == sorted(sum(([i] * int(p[0].sum()) for i, (_, p, _) in
                                                             enumerate(steps)), []))
    again = run(tiny_model, attn=attn, k=k, early_stop=False)[1]['x']
    assert torch.equal(x, again), 'greedy decoding is not deterministic'


def test_step_of_rebuilds_every_state(tiny_model):
    prompt, out, steps = run(tiny_model, attn='bidirectional', k=1, early_stop=False)
    P = prompt.shape[1]
    for i, (x_after, _, _) in enumerate(steps):
        state = torch.where(out['step_of'] <= i, out['x'][:, P:], cdlm.MASK_ID)
        assert torch.equal(state, x_after[:, P:]), f'state after step {i} differs'


def test_sampling_is_reproducible_with_a_generator(tiny_model):
    a = run(tiny_model, attn='bidirectional', temperature=1.0, seed=3)[1]['x']
    b = run(tiny_model, attn='bidirectional', temperature=1.0, seed=3)[1]['x']
    c = run(tiny_model, attn='bidirectional', temperature=1.0, seed=4)[1]['x']
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_threshold_progress_and_extremes(tiny_model):
    _, out, steps = run(tiny_model, attn='block_causal', threshold=0.5, k=None, early_stop=False)
    assert all((pick.sum(-1) >= 1).all() for _, pick, _ in steps), 'a step finalized nothing'
    _, out1, steps1 = run(tiny_model, attn='block_causal', threshold=1.0, k=None, early_stop=False)
    assert all((pick.sum(-1) == 1).all() for _, pick, _ in steps1) and (out1['nfe'] == 12).all()
    _, out0, steps0 = run(tiny_model, attn='block_causal', threshold=0.0, k=None, early_stop=False)
    assert (out0['nfe'] == 3).all() and all((pick.sum(-1) == 4).all() for _, pick, _ in steps0)


def test_early_stop_after_eos(tiny_model):
    with torch.no_grad():  # force EOS everywhere: the first finalized EOS ends the response
        tiny_model.lm_head.weight.zero_()
        tiny_model.lm_head.weight[cdlm.EOS_ID] = 1.0
        tiny_model.ln_f.weight.zero_()
        tiny_model.ln_f.bias.fill_(1.0)
    _, out, _ = run(tiny_model, attn='block_causal', threshold=0.9, k=None, use_cache=True)
    _, full, _ = run(tiny_model, attn='block_causal', threshold=1.0, k=None, early_stop=False)
    assert (out['x'][:, 6:] == cdlm.EOS_ID).all()
    assert (out['nfe'] == 1).all() and (full['nfe'] == 12).all(), (out['nfe'], full['nfe'])


def test_early_stop_turns_every_later_mask_into_eos(tiny_model):
    with torch.no_grad():  # make EOS likely (about 1/3 everywhere) but not certain
        tiny_model.ln_f.bias.fill_(0.5)
        tiny_model.lm_head.weight[cdlm.EOS_ID] = 0.3
    _, out, _ = run(tiny_model, attn='block_causal', k=1, batch=8, seed=1)
    assert (out['x'] == cdlm.EOS_ID).any(), 'no EOS drawn: pick another seed'
    for row, step_of in zip(out['x'][:, 6:], out['step_of']):
        for j in (row == cdlm.EOS_ID).nonzero().flatten().tolist():  # what was still masked when EOS landed at j
            later = step_of[j + 1:] >= step_of[j]
            assert (row[j + 1:][later] == cdlm.EOS_ID).all(), (row, step_of)


def test_bad_lengths_are_rejected(tiny_model):
    with pytest.raises(ValueError, match='multiple'):
        cdlm.generate(tiny_model, torch.zeros(1, 4, dtype=torch.long), 10, 4)
    with pytest.raises(ValueError, match='exceeds'):
        cdlm.generate(tiny_model, torch.zeros(1, 30, dtype=torch.long), 8, 4)
    with pytest.raises(ValueError, match='block_causal'):
        cdlm.generate(tiny_model, torch.zeros(1, 4, dtype=torch.long), 8, 4, use_cache=True)
    with pytest.raises(ValueError, match='early_stop=False'):  # filled-in EOS would have no recorded target
        cdlm.generate(tiny_model, torch.zeros(1, 4, dtype=torch.long), 8, 4, record_topk=3)


def exactness_sweep(n_draws, seq_len, n_layer, d_model, seed=0):
    """Cached vs uncached block-causal decoding over random (P, L, B, tau, temperature, early stop, batch, seed)."""
    rng, worst = random.Random(seed), 0.0
    torch.manual_seed(seed)
    models = [cdlm.Transformer(seq_len=seq_len, n_layer=n_layer, n_head=2, d_model=d_model).eval() for _ in range(4)]
    for draw in range(n_draws):
        P, B = rng.randint(1, 12), rng.choice([1, 2, 4, 8, 16])
        L = B * rng.randint(1, (seq_len - P) // B)
        kw = dict(attn='block_causal', threshold=rng.choice([0.0, 0.05, 0.2, 0.5, 0.9, 1.0]), k=None,
                  temperature=rng.choice([0.0, 0.0, 1.0]), early_stop=rng.random() < 0.5)
        model, seed = models[draw % 4], rng.randrange(10 ** 6)
        _, a, sa = run(model, P, L, B, batch=rng.randint(1, 3), seed=seed, use_cache=False, **kw)
        _, b, sb = run(model, P, L, B, batch=len(a['x']), seed=seed, use_cache=True, **kw)
        assert torch.equal(a['x'], b['x']) and torch.equal(a['nfe'], b['nfe']), f'draw {draw}: P={P} L={L} B={B} {kw}'
        assert len(sa) == len(sb)
        worst = max([worst] + [(la - lb).abs().max().item() for (_, _, la), (_, _, lb) in zip(sa, sb)])
    print(f'max abs logit difference cached vs uncached over {n_draws} draws: {worst:.2e}')
    assert worst < 1e-5, worst


def test_cached_decoding_is_exact_over_random_draws():
    """Over 40 random draws on a random-init block-causal model in fp32, cached and uncached decoding give identical
    tokens and NFE, and every step's logits agree to 1e-5 (200 draws under -m slow)."""
    exactness_sweep(40, seq_len=48, n_layer=2, d_model=32)


@pytest.mark.slow
def test_cached_decoding_is_exact_over_200_random_draws():
    exactness_sweep(200, seq_len=48, n_layer=2, d_model=32)


@pytest.mark.slow
def test_cached_decoding_is_exact_on_a_default_sized_model():
    exactness_sweep(100, seq_len=72, n_layer=4, d_model=128, seed=1)


def test_kv_cache_starts_empty_with_one_slot_per_layer_and_position():
    """KVCache(model, batch 3, 20 positions) for 2 layers of 2 heads of width 16: keys and values (3, 2, 20, 16) per
    layer, no position final yet (len 0). The dtype is the weights' (fp32), or autocast's (bf16) when it is on:
    keys come out in that dtype, so the prefix is not copied to fp32 at every step."""
    torch.manual_seed(0)
    model = cdlm.Transformer(seq_len=24, n_layer=2, n_head=2, d_model=32).eval()
    cache = cdlm.KVCache(model, 3, 20)
    assert len(cache) == 0 and len(cache.k) == len(cache.v) == 2
    assert all(t.shape == (3, 2, 20, 16) and t.dtype == torch.float32 for t in cache.k + cache.v)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert cdlm.KVCache(model, 1, 24, 'cpu').k[0].dtype == torch.bfloat16


def test_kv_cache_write_and_commit_by_hand(tiny_model):
    """P=4, two blocks of 4, block-causal. Run the canvas through the cache piece by piece and compare each piece's
    logits with a full recompute (no cache); len(cache) counts the committed positions:
      prompt 0:4, commit 4                   -> len 4
      block 0:4:8 still masked, commit 0     -> len 4 (keys computed from masks are not kept)
      block 0 clean, commit 2 of its 4       -> len 6 (the masked keys written before are overwritten)
      positions 6:8 again, commit 2          -> len 8
      block 1:8:12, no mask needed, commit 0 -> len 8"""
    mask = cdlm.attention_mask('block_causal', 12, 4, 4)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 4:] = cdlm.MASK_ID
    full_x, full_y = tiny_model(x, mask), tiny_model(y, mask)
    cache = cdlm.KVCache(tiny_model, 2, 12)
    pieces = [(x, 0, 4, mask[:4, :4], 4, full_x, 4), (y, 4, 8, mask[4:8, :8], 0, full_y, 4),
              (x, 4, 8, mask[4:8, :8], 2, full_x, 6), (x, 6, 8, mask[6:8, :8], 2, full_x, 8),
              (x, 8, 12, None, 0, full_x, 8)]  # (tokens, start, end, mask rows, commit, full recompute, len after)
    for src, a, e, m, commit, want, n in pieces:
        got = tiny_model(src[:, a:e], m, cache, commit=commit)
        diff = (got - want[:, a:e]).abs().max().item()
        assert diff < 1e-5, f'positions {a}:{e}: cached logits differ from a full recompute by {diff:.2e}'
        assert len(cache) == n, f'after positions {a}:{e} with commit={commit}: len(cache) {len(cache)}, want {n}'


def passes(model, prompt, L, B, use_cache, **kw):
    """generate with a spy on the model: (width of the input, len(cache) before the pass, commit) for each pass."""
    seen, steps = [], []

    def spy(module, args, kwargs):
        cache = args[2] if len(args) > 2 else kwargs.get('cache')
        seen.append((args[0].shape[1], None if cache is None else len(cache), kwargs.get('commit')))
    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    out = cdlm.generate(model, prompt, L, B, attn='block_causal', use_cache=use_cache,
                        on_step=lambda x, s, pick, logits: steps.append(logits.clone()), **kw)
    handle.remove()
    return out, seen, steps


def test_generate_cached_runs_each_step_on_the_current_block(tiny_model):
    """P=3, L=8, B=4, k=2: two steps a block. The first pass runs the uncached prompt with block 0 (7 positions) and
    commits the prompt (3); the next runs block 0 alone (4); the first pass of block 1 runs the finished block 0 with
    block 1 (8) and commits block 0 (4); the last runs block 1 alone. Tokens, NFE and every step's logits match the
    uncached decode."""
    prompt = torch.randint(0, 256, (2, 3), generator=torch.Generator().manual_seed(0))
    kw = dict(k=2, threshold=None, early_stop=False)
    a, _, la = passes(tiny_model, prompt, 8, 4, False, **kw)
    b, seen, lb = passes(tiny_model, prompt, 8, 4, True, **kw)
    assert seen == [(7, 0, 3), (4, 3, 0), (8, 3, 4), (4, 7, 0)], f'(width, len(cache), commit) per pass: {seen}'
    assert torch.equal(a['x'], b['x']) and torch.equal(a['nfe'], b['nfe']) and (b['nfe'] == 4).all()
    assert len(la) == len(lb) == 4
    diff = max((p - q).abs().max().item() for p, q in zip(la, lb))
    assert diff < 1e-5, f'step logits cached vs uncached differ by {diff:.2e}'


@pytest.mark.parametrize('kw', [dict(k=None, threshold=0.0, early_stop=True),
                                dict(k=None, threshold=0.0041, temperature=1.0, early_stop=False),
                                dict(k=3, threshold=None, early_stop=True)])
def test_generate_cached_matches_uncached(tiny_model, kw):
    """P=5, L=12, B=4: a whole block per step (every pass also writes the block before), a varying number per step
    (sampled; 7 to 10 steps a row here) and k=3: the cached decode gives the uncached one's tokens, NFE and logits."""
    prompt = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(1))
    outs = [passes(tiny_model, prompt, 12, 4, c, generator=torch.Generator().manual_seed(2), **kw) for c in (0, 1)]
    (a, _, la), (b, _, lb) = outs
    assert torch.equal(a['x'], b['x']) and torch.equal(a['nfe'], b['nfe']), (a['nfe'], b['nfe'])
    assert len(la) == len(lb) and max((p - q).abs().max().item() for p, q in zip(la, lb)) < 1e-5


def test_generate_cached_matches_uncached_under_bf16_autocast():
    """Under CPU bf16 autocast (a bf16 cache) the cached decode still matches the uncached one token for token."""
    torch.manual_seed(0)
    model = cdlm.Transformer(seq_len=24, n_layer=2, n_head=2, d_model=32).eval()
    prompt = torch.randint(0, 256, (3, 8))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        a, b = (cdlm.generate(model, prompt, 16, 4, attn='block_causal', use_cache=c, k=None, threshold=0.5)
                for c in (False, True))
    assert torch.equal(a['x'], b['x']) and torch.equal(a['nfe'], b['nfe'])


def test_autoregressive_decoding_with_and_without_cache(tiny_model):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (3, 5), generator=g)
    a = cdlm.generate_ar(tiny_model, prompt, 10, use_cache=False, early_stop=False)
    b = cdlm.generate_ar(tiny_model, prompt, 10, use_cache=True, early_stop=False)
    assert torch.equal(a['x'], b['x']) and (a['nfe'] == 10).all()
    x = prompt.clone()  # reference: recompute everything and take the last position's argmax
    for _ in range(10):
        mask = cdlm.attention_mask('causal', x.shape[1])
        x = torch.cat([x, tiny_model(x, mask)[:, -1].argmax(-1, keepdim=True)], dim=1)
    done = (x[:, 5:] == cdlm.EOS_ID).cumsum(-1) > 0  # after an EOS the baseline writes EOS
    assert torch.equal(torch.where(done, cdlm.EOS_ID, x[:, 5:]), a['x'][:, 5:])



def compiled_matches_eager(backend, uncached=True):
    """compile_decoder's model decodes token for token like the eager one: the teacher's rule, the cached and the
    uncached student."""
    torch.manual_seed(0)
    model = cdlm.Transformer(seq_len=32, n_layer=2, n_head=2, d_model=32).eval()
    compiled = cdlm.compile_decoder(model, 'cpu', backend)
    prompt = torch.randint(0, 256, (3, 8))
    for attn, kw in [('bidirectional', dict(k=1, threshold=None, early_stop=False)),
                     ('block_causal', dict(use_cache=True, k=None, threshold=0.3)),
                     ('block_causal', dict(use_cache=False, k=2, threshold=None))][:3 if uncached else 2]:
        a, b = (cdlm.generate(m, prompt, 24, 8, attn=attn, **kw) for m in (model, compiled))
        assert torch.equal(a['x'], b['x']) and torch.equal(a['nfe'], b['nfe']), (attn, kw)


@pytest.mark.slow
def test_compiled_decoding_gives_the_same_tokens():
    """Graph capture only (backend aot_eager: no code generation), so it takes seconds: the cache's in-place writes
    and its position counter survive tracing."""
    compiled_matches_eager('aot_eager', uncached=False)


@pytest.mark.slow
def test_compiled_decoding_gives_the_same_tokens_with_inductor():
    """The default backend, as `--compile` runs on a CPU: generated kernels, minutes to compile."""
    compiled_matches_eager('inductor')


@pytest.mark.parametrize('attn, use_cache', [('block_causal', True), ('block_causal', False), ('bidirectional', False)])
def test_each_row_reports_its_own_nfe_in_a_batch(tiny_model, attn, use_cache):
    """A batch decodes in lockstep, but `nfe` must charge each row only the passes it needed: what the row costs
    alone. The rows here need 5 to 7 passes (threshold 0.005 over the random model's flat distributions)."""
    prompt = torch.randint(0, 256, (6, 8), generator=torch.Generator().manual_seed(0))
    rule = dict(attn=attn, use_cache=use_cache, k=None, threshold=0.005)
    together = cdlm.generate(tiny_model, prompt, 24, 8, **rule)
    alone = [cdlm.generate(tiny_model, row[None], 24, 8, **rule) for row in prompt]
    assert len(set(together['nfe'].tolist())) > 1, f'every row needs as many passes: {together["nfe"].tolist()}'
    assert together['nfe'].tolist() == [o['nfe'].item() for o in alone], (together['nfe'], [o['nfe'] for o in alone])
    assert torch.equal(together['x'], torch.cat([o['x'] for o in alone])), 'a row decodes differently in a batch'


@pytest.mark.parametrize('attn, use_cache', [('bidirectional', False), ('block_causal', True), ('block_causal', False)])
def test_infilling_never_changes_a_given_position(tiny_model, attn, use_cache):
    """generate's canvas: only MASK_ID positions are decoded, every other token comes back as given, and a block with
    nothing masked costs no pass (here block 1 of 3 is given whole)."""
    g = torch.Generator().manual_seed(0)
    prompt, given = torch.randint(0, 256, (3, 8), generator=g), torch.randint(0, 256, (3, 24), generator=g)
    hide = torch.rand(3, 24, generator=g) < 0.5
    hide[:, 8:16] = False
    out = cdlm.generate(tiny_model, prompt, 24, 8, attn=attn, use_cache=use_cache, k=1, threshold=None,
                        early_stop=False, canvas=given.masked_fill(hide, cdlm.MASK_ID))
    resp = out['x'][:, 8:]
    assert torch.equal(resp[~hide], given[~hide]) and (resp != cdlm.MASK_ID).all()
    assert out['nfe'].tolist() == hide.sum(-1).tolist(), 'one token per step: one pass per hidden position'
    assert torch.equal(out['x'][:, :8], prompt)


class TableModel(torch.nn.Module):
    """A stand-in model for the re-masking rule: whatever it is shown, position i gets the distribution probs[i]
    (T, V-1). It records the rows it was shown."""

    def __init__(self, probs):
        super().__init__()
        self.probs, self.args, self.seen = probs, dict(seq_len=probs.shape[0]), []

    def forward(self, idx, attn_mask=None, cache=None, commit=0):
        self.seen.append(idx.clone())
        return self.probs.log()[None, :idx.shape[1]].expand(idx.shape[0], -1, -1)


def test_correction_by_hand():
    """P=2, L=3, the response [5, 6, 7]. The model gives token 5 at position 0 probability 0.7, token 6 at position 1
    0.05 (token 9: 0.9), token 7 at position 2 0.2 (token 8: 0.75). token_probs scores each position in a row of
    its own with that position alone masked: [0.7, 0.05, 0.2]. Under below=0.1 only position 1 is re-masked and
    decoded again (to 9); under 0.25 positions 1 and 2 are (to 9 and 8); under 0.01 nothing is, and nothing changes.
    A response that ends early, [5, EOS, EOS], is scored up to its first EOS: two rows, the padding read as 1.0."""
    V = cdlm.VOCAB_SIZE - 1
    probs, given = torch.full((5, V), 1 / V, dtype=torch.float64), torch.zeros(5, V, dtype=torch.bool)
    for pos, tok, p in [(2, 5, 0.7), (3, 6, 0.05), (3, 9, 0.9), (4, 7, 0.2), (4, 8, 0.75)]:
        probs[pos, tok], given[pos, tok] = p, True
    rest = (1 - (probs * given).sum(-1, keepdim=True)) / (~given).sum(-1, keepdim=True)  # the rest spread evenly
    probs = torch.where(given, probs, rest)
    x = torch.tensor([[1, 2, 5, 6, 7]])
    model = TableModel(probs)
    got = cdlm.token_probs(model, x, 2)
    assert torch.allclose(got, torch.tensor([[0.7, 0.05, 0.2]], dtype=got.dtype), atol=1e-4), got
    rows = model.seen[0]  # three rows, each hiding exactly its own position
    assert torch.equal(rows == cdlm.MASK_ID, torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]).bool())
    padded = TableModel(probs)  # [5, EOS, EOS]: the first EOS is scored, the padding after it is not (1.0)
    got = cdlm.token_probs(padded, torch.tensor([[1, 2, 5, cdlm.EOS_ID, cdlm.EOS_ID]]), 2)
    assert torch.allclose(got, torch.tensor([[0.7, rest[3, 0].item(), 1.0]], dtype=got.dtype), atol=1e-4), got
    assert torch.equal(padded.seen[0] == cdlm.MASK_ID, torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]).bool())
    for below, want, remasked in [(0.1, [5, 9, 7], [0, 1, 0]), (0.25, [5, 9, 8], [0, 1, 1]),
                                  (0.01, [5, 6, 7], [0, 0, 0])]:
        out = cdlm.correct(TableModel(probs), x, 2, 3, below, k=None, threshold=0.5)
        assert out['x'][0, 2:].tolist() == want and out['remasked'][0].int().tolist() == remasked, (below, out['x'])
        assert out['nfe'].tolist() == [1 + any(remasked)], 'the scoring pass, then one pass for the re-masked block'
