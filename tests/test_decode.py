"""Decoder invariants on tiny random models: the prompt is kept, steps finalize exactly what the rule says, nothing
stays masked, greedy is deterministic, early stop works, and the cached student decodes exactly like the uncached one."""
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


def test_kv_cache_is_exact_over_random_draws():
    """Over 200 random draws on a random-init block-causal model in fp32, cached and uncached decoding give identical
    tokens and NFE, and every step's logits agree to 1e-5."""
    exactness_sweep(200, seq_len=48, n_layer=2, d_model=32)


@pytest.mark.slow
def test_kv_cache_is_exact_on_a_default_sized_model():
    exactness_sweep(100, seq_len=72, n_layer=4, d_model=128, seed=1)


def test_kv_cache_takes_the_dtype_its_keys_come_in():
    """Under autocast the keys are bf16, and so is the cache (no fp32 copy of the prefix at every step); the cached
    decode still matches the uncached one token for token. Without autocast the cache has the weights' dtype."""
    torch.manual_seed(0)
    model = cdlm.Transformer(seq_len=24, n_layer=2, n_head=2, d_model=32).eval()
    assert cdlm.KVCache(model, 1, 24).k[0].dtype == torch.float32
    prompt = torch.randint(0, 256, (3, 8))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert cdlm.KVCache(model, 1, 24, 'cpu').k[0].dtype == torch.bfloat16
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


def test_compiled_decoding_gives_the_same_tokens():
    """Graph capture only (backend aot_eager: no code generation), so it takes seconds: the cache's in-place writes
    and its position counter survive tracing."""
    compiled_matches_eager('aot_eager', uncached=False)


@pytest.mark.slow
def test_compiled_decoding_gives_the_same_tokens_with_inductor():
    """The default backend, as `--compile` runs on a CPU: generated kernels, minutes to compile."""
    compiled_matches_eager('inductor')
