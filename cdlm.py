"""
cdlm: Consistency Diffusion Language Models (Kim et al., arXiv 2511.19269), small enough to read in one sitting.

How this model differs from a plain GPT (nanoGPT's model.py):
  1. No causal shift: the logits at position i predict token i itself, which is either shown or hidden by <|mask|>.
  2. The attention mask is an argument, not a constant: `bidirectional` for the masked-diffusion teacher,
     `block_causal` for the CDLM student (see attention_mask).
  3. The output layer has no row for <|mask|>: the model can never predict it (MDLM's SUBS parameterization).
  4. The KV cache holds only the prompt and finished blocks, the rows that never look forward, so it is exact.
  5. Decoding fills a fixed-length canvas of masks block by block, finalizing the most confident positions.
Everything else is a plain GPT: pre-norm blocks, a GELU MLP, learned absolute positions, plus rotary positions (as
in LLaDA) inside attention. NOTE: both kinds on purpose. This corpus puts digits at fixed offsets and repeats its
steps every 9 tokens; after 1000 teacher steps the pair reached val loss 0.34, learned-only 0.42, rotary-only 0.63.
"""
import contextlib
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import tasks

# The method comes first, in the order of the recipe (tokenizer, mask, model and cache, losses, decoding,
# trajectories and the CDLM losses, evaluation). The plumbing every script needs around it (config parsing and
# checks, devices and precision, the training loop, the subprocess helper, checkpoints) is at the end of the file.

# -----------------------------------------------------------------------------
# tokenizer: a real tiktoken.Encoding built offline from the 256 byte ranks

TOKENIZER = 'cdlm-bytes-v1'  # stored in checkpoints; change it whenever the ranks or specials change
EOS_ID, MASK_ID = 256, 257  # <|endoftext|> pads every response; <|mask|> is the absorbing diffusion state
VOCAB_SIZE = 258


def get_tokenizer():
    """Byte-level BPE with no merges: every byte (so every digit) is one token, and any unicode text round-trips.

    NOTE: no merge table. The corpus is digits and one-character operators, where merges would either split digits
    (forbidden) or save almost nothing, so the 256 byte ranks are the whole vocabulary.
    >>> get_tokenizer().encode_ordinary('7+5=12')
    [55, 43, 53, 61, 49, 50]
    """
    return tiktoken.Encoding(
        TOKENIZER, pat_str=r'\d|[^\d]+', mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={'<|endoftext|>': EOS_ID, '<|mask|>': MASK_ID}, explicit_n_vocab=VOCAB_SIZE)


def encode_example(enc, prompt, response, prompt_len, gen_len):
    """One row of token ids: the prompt left-padded with EOS to prompt_len, then the response EOS-padded to gen_len.

    NOTE: left-padding gives every prompt the same length, so a batch shares one canvas and one block-causal mask.
    """
    p, r = enc.encode_ordinary(prompt), enc.encode_ordinary(response)
    if len(p) > prompt_len:
        fail(f'prompt is {len(p)} tokens, longer than the model\'s prompt_len={prompt_len}')
    if len(r) > gen_len:
        fail(f'a response of {len(r)} tokens does not fit gen_len={gen_len}')
    return [EOS_ID] * (prompt_len - len(p)) + p + r + [EOS_ID] * (gen_len - len(r))


def encode_prompt(enc, prompt, prompt_len):
    """The prompt row of encode_example alone: (prompt_len,) token ids, left-padded with EOS."""
    return encode_example(enc, prompt, '', prompt_len, 0)


def generated_tokens(enc, text, gen_len):
    """Tokens a decode produced: the answer and its EOS. The prompt and the EOS padding after it are not counted."""
    return min(len(enc.encode_ordinary(text)) + 1, gen_len)


def load_split(split, prompt_len, gen_len, corpus='full'):
    """(x0, problems) for a split of a corpus (data/tasks.py's CORPORA): x0 (N, prompt_len + gen_len) int64, problems
    [(prompt, response, family)]."""
    problems = tasks.build_splits(corpus=corpus)[split]
    enc = get_tokenizer()
    x0 = torch.tensor([encode_example(enc, p, r, prompt_len, gen_len) for p, r, _ in problems])
    return x0, problems


def decode_response(enc, row):
    """Response text up to the first EOS; <|mask|> stays visible as a placeholder."""
    ids = row.tolist()
    ids = ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids
    return enc.decode(ids).replace('<|mask|>', '_')


# -----------------------------------------------------------------------------
# the attention mask: one pure function for teacher and student


def attention_mask(kind, seq_len, prompt_len=None, block_size=None, device=None):
    """allow[q, k] (seq_len, seq_len) bool: may query position q attend to key position k?

    bidirectional: everything sees everything (the teacher, LLaDA-style).
    block_causal (CDLM, arXiv 2511.19269, as in BD3-LM; README, The block-causal mask): with P = prompt_len and
        blk(i) = (i - P) // block_size,
        allow(q, k) = k < P  or  (q >= P and k >= P and blk(k) <= blk(q))
    so the prompt sees only itself and a block sees the prompt, earlier blocks and itself. P=2, block_size=2:
              k: p p 0 0 1 1
           q p [ 1 1 0 0 0 0 ]
             p [ 1 1 0 0 0 0 ]
             0 [ 1 1 1 1 0 0 ]
             0 [ 1 1 1 1 0 0 ]
             1 [ 1 1 1 1 1 1 ]
             1 [ 1 1 1 1 1 1 ]
    causal: k <= q, the plain GPT mask, for the autoregressive baseline in bench.py.
    There are no defaults for prompt_len and block_size: a silently wrong block size is a classic bug.
    """
    if kind == 'bidirectional':
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
    if kind == 'causal':
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    if kind != 'block_causal':
        raise ValueError(f'unknown attention kind {kind!r}')
    if prompt_len is None or block_size is None:
        raise ValueError('block_causal needs prompt_len and block_size')
    i = torch.arange(seq_len, device=device)
    blk = (i - prompt_len).div(block_size, rounding_mode='floor')
    q_gen, k_gen = (i >= prompt_len)[:, None], (i >= prompt_len)[None, :]
    return ~k_gen | (q_gen & (blk[None, :] <= blk[:, None]))


# -----------------------------------------------------------------------------
# the model: one class for teacher and student


class KVCache:
    """Keys and values of the positions that are final: the prompt and finished blocks (CDLM; README, The
    block-causal mask).

    Under the block-causal mask these rows never attend forward, so what is cached equals what a full recompute gives.
    Each forward writes the keys and values of its new positions after the first `len(cache)` slots and attends over
    all of them; `commit` then keeps only the leading positions that are clean. The rest (a block still holding masks)
    is overwritten by the next call, so a key computed from a mask is never reused.
    """

    def __init__(self, model, batch_size, seq_len, device=None):
        n_head, d = model.args['n_head'], model.args['d_model']
        kind = torch.device(device or 'cpu').type  # keys come out in autocast's dtype when it is on, else the weights'
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else model.lm_head.weight.dtype
        shape = (batch_size, n_head, seq_len, d // n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.n = 0  # positions [0, n) are final

    def __len__(self):
        return self.n


def rope_table(seq_len, head_dim, base=10000.0):
    """cos and sin of rotary position embeddings (Su et al., RoFormer, arXiv 2104.09864) for positions 0..seq_len-1:
    (seq_len, head_dim) each, every frequency written twice, once for each half of a head. Attention scores then
    depend on relative offsets, which suits a corpus whose steps repeat every few tokens."""
    freqs = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(seq_len).float()[:, None] * freqs[None, :]  # (seq_len, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each channel pair (i, i + head_dim/2) of x (..., T, head_dim) by its position's angle:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). cos and sin (T, head_dim) come from rope_table."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


def attend(q, k, v, attn_mask=None):
    """softmax(q k^T / sqrt(head_dim)) v for (B, H, T, head_dim) tensors; attn_mask (T, S) bool, True = may attend.
    PyTorch's fused kernel, except under bf16 autocast on a CPU: there its backward is 4x slower than in fp32 (torch
    2.13), which cancelled all of bf16's gain, so the three plain steps below run instead."""
    if not (q.device.type == 'cpu' and torch.is_autocast_enabled('cpu')):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float('-inf'))
    return scores.float().softmax(-1).to(v.dtype) @ v


class Block(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model, bias=False), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model, bias=False))

    def forward(self, x, attn_mask, rope, cache=None, layer=0):
        B, T, C = x.shape
        # (3, B, H, T, head_dim): queries, keys and values, split into heads
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rope(qkv[:2], *rope), qkv[2]  # q and k rotated together: half the ops of one at a time
        if cache is not None:  # write the new keys after the final ones and attend over both
            n = cache.n
            cache.k[layer][:, :, n:n + T], cache.v[layer][:, :, n:n + T] = k, v
            k, v = cache.k[layer][:, :, :n + T], cache.v[layer][:, :, :n + T]  # the cache has q's dtype: KVCache
        y = attend(q, k, v, attn_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A pre-norm transformer whose logits at position i predict token i (no shift), over a fixed-length canvas."""

    def __init__(self, vocab_size=VOCAB_SIZE, seq_len=72, n_layer=4, n_head=4, d_model=128):
        super().__init__()
        self.args = dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model)
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        cos, sin = rope_table(seq_len, d_model // n_head)
        self.register_buffer('rope_cos', cos, persistent=False)  # not in the state dict: derived from the shapes
        self.register_buffer('rope_sin', sin, persistent=False)
        self.lm_head = nn.Linear(d_model, vocab_size - 1, bias=False)  # NOTE: no row for <|mask|>, the last id
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, attn_mask=None, cache=None, commit=0):
        """idx (B, T) are positions [start, start+T) of the canvas, start = len(cache) (0 without a cache).
        attn_mask (T, start+T) bool or None for full attention. Returns logits (B, T, V-1).
        With a cache, the first `commit` of these positions become final and are kept."""
        start = cache.n if cache is not None else 0
        end = start + idx.shape[1]
        rope = self.rope_cos[start:end], self.rope_sin[start:end]
        x = self.wte(idx) + self.wpe.weight[start:end]
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, rope, cache, i)
        if cache is not None:
            cache.n += commit
        return self.lm_head(self.ln_f(x))


# -----------------------------------------------------------------------------
# losses


def antithetic_t(batch_size, eps=1e-3, generator=None, device=None):
    """Mask ratios t in [eps, 1), one per row, stratified across the batch for lower variance
    (MDLM's low-discrepancy sampler, Sahoo et al., arXiv 2406.07524)."""
    u = torch.rand(1, generator=generator, device=device)
    return eps + (1 - eps) * ((u + torch.arange(batch_size, device=device) / batch_size) % 1)


def mask_tokens(x0, maskable, t, generator=None, complement=False):
    """Hide each maskable position with probability t (one t per row). Returns xt and the bool mask of hidden spots.
    complement=True: the second half of the rows repeats the first half and hides exactly the maskable positions
    that the first half shows, so every maskable token of a pair is scored once (complementary masking)."""
    hidden = maskable & (torch.rand(x0.shape, generator=generator, device=x0.device) < t[:, None])
    if complement:
        half = x0.shape[0] // 2
        hidden[half:2 * half] = maskable & ~hidden[:half]
    return torch.where(hidden, MASK_ID, x0), hidden


def mask_block(resp, b, block_size, t, generator=None):
    """The states semi-autoregressive decoding meets (BD3-LM's noise, Arriola et al., arXiv 2503.09573): blocks before
    b clean, block b hidden with probability t, later blocks all masked. resp (N, L) response tokens, b (N,) block
    indices. Returns xt and `hidden`, the block-b positions to score (later blocks are masked but not scored)."""
    blk = torch.arange(resp.shape[1], device=resp.device)[None, :] // block_size
    hidden = (blk == b[:, None]) & (torch.rand(resp.shape, generator=generator, device=resp.device) < t[:, None])
    return torch.where(hidden | (blk > b[:, None]), MASK_ID, resp), hidden


def mdm_loss(logits, x0, hidden, t, norm, weight='elbo'):
    """Masked-diffusion loss on the hidden positions. logits (B, T, V-1), x0 (B, T).
    weight='elbo': the ELBO (MDLM, arXiv 2406.07524; LLaDA's SFT loss, arXiv 2502.09992), cross-entropy weighted by
    1/t, summed and divided by `norm` maskable positions per row (the response length).
    weight='mean': the plain mean cross-entropy over all hidden tokens of the batch (no 1/t; `t` and `norm` unused).
    NOTE: not an ELBO; it weighs a row by how many tokens it hides, so heavily masked rows count more, and it drops
    the 1/t spikes of nearly clean rows (EXPERIMENTS.md, 2026-11-29: the loss comparison)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten().clamp_max(logits.shape[-1] - 1),
                         reduction='none').view(x0.shape)
    if weight == 'mean':
        return (ce * hidden).sum() / hidden.sum().clamp_min(1)
    return (ce * hidden / t[:, None]).sum() / (x0.shape[0] * norm)


def kl_loss(p, logits, select):
    """Mean over selected positions of KL(p || softmax(logits)), the form of both CDLM losses (README, The three
    losses):
    distillation with p = the teacher's distribution, consistency with p = the student's own at a later state.
    p (..., V-1) is a constant target (no gradient flows into it); select (...) bool."""
    logq = F.log_softmax(logits.float(), dim=-1)
    kl = (torch.xlogy(p, p) - p * logq).sum(-1)
    return (kl * select).sum() / select.sum().clamp_min(1)


# -----------------------------------------------------------------------------
# decoding: one set of helpers for the teacher, trajectory collection and the student, with or without cache


def predict(logits, temperature=0.0, generator=None):
    """Candidate token and its confidence at every position. logits (B, W, V-1) -> (tokens, conf), both (B, W).

    Greedy at temperature 0; otherwise a Gumbel-max sample in float64 (as LLaDA's generate.py: low-precision Gumbel
    noise collapses the tail of the distribution). Confidence is the model's (untempered) probability of the token.
    NOTE: float32 on Apple's MPS, which has no float64."""
    logits = logits.to(torch.float32 if logits.device.type == 'mps' else torch.float64)
    probs = logits.softmax(-1)
    if temperature == 0:
        conf, tokens = probs.max(-1)
        return tokens, conf
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    tokens = (logits / temperature - torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))).argmax(-1)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def choose_positions(conf, todo, k=None, threshold=None):
    """Which still-masked positions to finalize this step; conf and todo (B, W). threshold if given, else k.

    k: the k most confident (LLaDA's low-confidence remasking; k=1 is the CDLM teacher's rule).
    threshold: every position with confidence > threshold, and always the most confident one, so each step makes
    progress (Fast-dLLM's rule). NOTE: strictly greater, so threshold=1.0 means exactly one token per step."""
    conf = conf.masked_fill(~todo, -1.0)
    best = F.one_hot(conf.argmax(-1), conf.shape[-1]).bool()
    if threshold is not None:
        pick = (conf > threshold) | best
    else:
        top = conf.topk(min(k, conf.shape[-1]), dim=-1).indices
        pick = torch.zeros_like(todo).scatter_(-1, top, True)
    return pick & todo


@torch.no_grad()
def generate(model, prompt, gen_len, block_size, attn='bidirectional', use_cache=False, k=1, threshold=None,
             temperature=0.0, early_stop=True, generator=None, record_topk=0, on_step=None, canvas=None):
    """Semi-autoregressive masked-diffusion decoding over blocks (LLaDA, arXiv 2502.09992; CDLM; README, Decoding).

    Args:
        model: a Transformer.
        prompt: (B, P) token ids; one shared length (left-pad shorter prompts with EOS, see encode_example).
        gen_len: generated length L, a multiple of block_size.
        block_size: positions are only finalized inside the current block, left to right over blocks.
        attn: 'bidirectional' (teacher: the whole canvas is recomputed every step) or 'block_causal' (student).
        use_cache: block_causal only. Keep exact keys/values of the prompt and finished blocks and run each step on the
            current block alone. The cache write of a finished block is fused with the next block's first step.
            Without it, each step recomputes the prefix up to the current block: same tokens, same NFE.
        k / threshold: how many positions a step finalizes, see choose_positions. Pass threshold=None to use k.
        temperature: 0 for greedy, else Gumbel-max sampling in float64 with `generator`.
        early_stop: once EOS is finalized, every later position becomes EOS and needs no forward pass.
        record_topk: if > 0, also return each position's top-k log-probs at the step it was finalized (trajectories).
        on_step: optional callback(x, start, pick, logits) after each step, for animations and tests: the canvas,
            where the current block starts in it, the positions finalized in the block and the block's logits.
        canvas: optional (B, L) response to start from (infilling): MASK_ID where to decode, any other token is given
            and never changed. A block with nothing masked takes no pass. Default: all masks.
    Returns a dict: x (B, P+L) final tokens, nfe (B,) forward passes each row needed (what it would cost at batch 1),
        step_of (B, L) the step at which each position was finalized, and top_idx / top_logp (B, L, record_topk).
    """
    B, P = prompt.shape
    T, dev = P + gen_len, prompt.device
    if gen_len % block_size:
        raise ValueError(f'gen_len={gen_len} is not a multiple of block_size={block_size}')
    if T > model.args['seq_len']:
        raise ValueError(f'prompt {P} + gen_len {gen_len} exceeds the model context seq_len={model.args["seq_len"]}')
    if use_cache and attn != 'block_causal':
        raise ValueError('an exact KV cache needs the block_causal mask')
    if record_topk and early_stop:  # EOS filled in by early stop has no teacher distribution to record
        raise ValueError('record_topk needs early_stop=False: a trajectory finalizes one token per step')
    x = torch.cat([prompt, torch.full((B, gen_len), MASK_ID, device=dev) if canvas is None else canvas], dim=1)
    attn_mask = None if attn == 'bidirectional' else attention_mask(attn, T, P, block_size, device=dev)
    cache = KVCache(model, B, T, dev) if use_cache else None
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    step_of = torch.full((B, gen_len), -1, dtype=torch.long, device=dev)
    top_idx = torch.zeros(B, gen_len, record_topk, dtype=torch.long, device=dev)
    top_logp = torch.zeros(B, gen_len, record_topk, device=dev)
    for s in range(P, T, block_size):
        e = s + block_size
        while (todo := x[:, s:e] == MASK_ID).any():
            if attn == 'bidirectional':
                logits = model(x)[:, s:e]  # (B, block_size, V-1)
            elif cache is None:
                logits = model(x[:, :e], attn_mask[:e, :e])[:, s:e]
            else:  # run on [finished-but-uncached positions ; current block], keep the former in the cache
                # the block's rows see every cached key and the whole block: only a pass that also writes a
                # finished block (c < s) needs the mask, to hide the current block from that block's rows
                c = len(cache)
                logits = model(x[:, c:e], attn_mask[c:e, :e] if c < s else None, cache, commit=s - c)[:, s - c:]
            logits = logits.float()
            active = todo.any(-1)
            nfe += active
            tokens, conf = predict(logits, temperature, generator)
            pick = choose_positions(conf, todo, k, threshold)
            step = (nfe - 1)[:, None]  # (B, 1) the step each row just took
            x[:, s:e] = torch.where(pick, tokens, x[:, s:e])
            step_of[:, s - P:e - P] = torch.where(pick, step, step_of[:, s - P:e - P])
            if record_topk:
                top = logits.log_softmax(-1).topk(record_topk, dim=-1)
                top_idx[:, s - P:e - P][pick], top_logp[:, s - P:e - P][pick] = top.indices[pick], top.values[pick]
            if early_stop and (x[:, s:e] == EOS_ID).any():  # everything after a finalized EOS is EOS
                resp = x[:, P:]
                fill = ((resp == EOS_ID).cumsum(-1) > 0) & (resp == MASK_ID)
                x[:, P:] = torch.where(fill, EOS_ID, resp)
                step_of = torch.where(fill, step, step_of)
            if on_step is not None:
                on_step(x, s, pick, logits)
    return dict(x=x, nfe=nfe, step_of=step_of, top_idx=top_idx, top_logp=top_logp)


def compile_decoder(model, device, backend='inductor'):
    """torch.compile a model for decoding, one graph per distinct pass (dynamic=False): one per batch size for the
    teacher, two per block for a cached student (the cache's length is part of the graph). On CUDA, CUDA graphs
    (mode='reduce-overhead') keep a batch-1 pass from being launch-bound; never run here (no GPU was lent).
    NOTE: not for an AR model: its cache grows by one token per pass, one shape each."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(model, dynamic=False, backend=backend,
                         mode='reduce-overhead' if device.startswith('cuda') and backend == 'inductor' else None)


@torch.no_grad()
def generate_ar(model, prompt, gen_len, use_cache=True, early_stop=True):
    """Greedy next-token decoding of a causal model (the same-size autoregressive baseline of bench.py). Here the
    logits at position i predict token i+1, as in any GPT. One forward pass per token; with the cache each pass runs
    on the newest token alone. Returns a dict like generate: x (B, P+L), nfe (B,)."""
    B, P = prompt.shape
    T, dev = P + gen_len, prompt.device
    attn_mask = attention_mask('causal', T, device=dev)
    cache = KVCache(model, B, T, dev) if use_cache else None
    x = torch.cat([prompt, torch.full((B, gen_len), EOS_ID, device=dev)], dim=1)
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for i in range(P, T):
        if cache is None:
            logits = model(x[:, :i], attn_mask[:i, :i])[:, -1]
        else:
            c = len(cache)  # one new token sees everything before it: no mask needed after the prompt's pass
            logits = model(x[:, c:i], attn_mask[c:i, :i] if i - c > 1 else None, cache, commit=i - c)[:, -1]
        nfe += ~done
        x[:, i] = torch.where(done, EOS_ID, logits.argmax(-1))
        done |= x[:, i] == EOS_ID
        if early_stop and done.all():
            break
    return dict(x=x, nfe=nfe)


@torch.no_grad()
def token_probs(model, x, prompt_len, rows_per_pass=2048):
    """How likely the model finds each response token given every other token: position i is hidden alone and the
    model's probability of the token that was there is read back. x (B, T) with no masks -> (B, L) float.
    Meant for a bidirectional model (the teacher): it scores a position from both sides, as no autoregressive model
    can. Each row scores its response up to its first EOS, that EOS included; the padding after it reads 1.0 and costs
    nothing (a third of the rows of this corpus's code responses). One row per scored position, in forward passes of
    up to rows_per_pass rows."""
    resp = x[:, prompt_len:]
    is_eos = (resp == EOS_ID).long()
    b, i = (is_eos.cumsum(-1) - is_eos == 0).nonzero(as_tuple=True)  # (row, position) up to the first EOS
    rows, pos = x[b], prompt_len + i  # row n hides position pos[n] of response b[n]
    n = torch.arange(len(rows), device=x.device)
    tok = rows[n, pos]
    rows[n, pos] = MASK_ID
    prob = []
    for j in range(0, len(rows), rows_per_pass):
        logits = model(rows[j:j + rows_per_pass]).float()  # (n, T, V-1)
        at = logits[n[:len(logits)], pos[j:j + rows_per_pass]]  # (n, V-1) at each row's hidden position
        prob.append(at.softmax(-1).gather(-1, tok[j:j + rows_per_pass, None]).squeeze(-1))
    out = torch.ones(resp.shape, device=x.device)
    out[b, i] = torch.cat(prob)
    return out


def correct(model, x, prompt_len, block_size, below=0.1, **decode_kw):
    """Correction with a bidirectional model: re-mask every response token whose probability given all the others
    (token_probs) is under `below`, then decode those positions again with the rest given (infilling, generate's
    canvas). x (B, T) prompt and response. Returns generate's dict, its nfe counting the scoring pass too, plus
    prob (B, L) and remasked (B, L) bool.
    NOTE: one round, and tokens the model finds likely are never touched, so a response it already believes
    (every token at `below` or more) comes back unchanged."""
    prob = token_probs(model, x, prompt_len)
    remasked = prob < below
    canvas = x[:, prompt_len:].masked_fill(remasked, MASK_ID)
    out = generate(model, x[:, :prompt_len], x.shape[1] - prompt_len, block_size, canvas=canvas, early_stop=False,
                   **decode_kw)
    return dict(out, nfe=out['nfe'] + 1, prob=prob, remasked=remasked)


# -----------------------------------------------------------------------------
# trajectories and the student's three losses (CDLM, arXiv 2511.19269; README, The three losses)
#
# On disk, one torch file (loads with weights_only=True) holding N teacher decodes of T = P + L tokens:
#   x        (N, T)    int64    the teacher's final tokens, prompt included
#   step_of  (N, L)    int16    the step at which each response position was finalized (one token per step)
#   top_idx  (N, L, K) int16    the teacher's top-K token ids at position i at the step it was finalized
#   top_logp (N, L, K) float16  their log-probabilities
#   gt       (N, T)    int64    the ground-truth example (prompt and corpus response), for the auxiliary DLM loss
#   meta     dict               teacher fingerprint, prompt_len, gen_len, block_size, temperatures, topk (K), count
# NOTE: top-K log-probs rather than full distributions or hidden states: with K=8 the 257-way distributions shrink
# 20x, and the teacher's mass beyond its top 8 tokens is negligible here (the paper stores hidden states instead).


def fingerprint(model):
    """A short hash of the weights: which teacher made a set of trajectories."""
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def trajectory_state(x, step_of, prompt_len, k):
    """State k of a trajectory: position i of the response is shown iff step_of[i] < k. x (N, T), k (N,) -> (N, T)."""
    resp = torch.where(step_of < k[:, None], x[:, prompt_len:], MASK_ID)
    return torch.cat([x[:, :prompt_len], resp], dim=1)


def decoded_block(resp, block_size, u):
    """A block per row, uniform over the blocks that decoding reaches (up to the one holding the first EOS; early stop
    skips the rest). resp (N, L) response tokens, u (N,) uniform in [0, 1) -> (N,) block indices."""
    is_eos = resp == EOS_ID
    first_eos = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), resp.shape[1] - 1)
    return (u * (first_eos // block_size + 1)).long()


def sample_states(x, step_of, prompt_len, block_size, generator=None):
    """Pick, per trajectory, a block b and two states y (earlier) and y' (later) inside it.

    b is uniform over the blocks the student actually decodes (up to the one holding the first EOS). Because the teacher
    finalizes one token per step, block b is decoded in steps [bB, bB+B): y has j of its positions final, j uniform in
    [0, B-2], and y' has j' uniform in [j+1, B-1], so y' is strictly more informed and still has a masked position.
    Returns k_y, k_y2 (N,) state indices, b (N,), and the bool (N, L) selections:
        U = block-b positions masked in y (the distillation targets), S = block-b positions masked in y' (consistency).
    """
    N, L = step_of.shape
    dev = step_of.device
    u = torch.rand(3, N, generator=generator, device=dev)
    b = decoded_block(x[:, prompt_len:], block_size, u[0])
    j = (u[1] * (block_size - 1)).long()
    j2 = j + 1 + (u[2] * (block_size - 1 - j)).long()
    k_y, k_y2 = b * block_size + j, b * block_size + j2
    in_block = torch.arange(L, device=dev)[None, :] // block_size == b[:, None]
    U = in_block & (step_of >= k_y[:, None])
    S = in_block & (step_of >= k_y2[:, None])
    return k_y, k_y2, b, U, S


def cdlm_losses(model, batch, prompt_len, block_size, w_cons=0.5, w_dlm=0.1, generator=None, distill_temp=1.0):
    """The three CDLM losses on a batch of trajectories (a dict in the on-disk format). Returns a dict of scalars.

    loss_distill = mean_{i in U} KL(p_teacher_i || q_student_i(y))     forward KL to the teacher at finalization
    loss_cons    = mean_{i in S} KL(sg q_student_i(y') || q_student_i(y))
    loss_dlm     = masked-diffusion loss on the ground truth, through the block-causal mask
    NOTE (the paper leaves y' open): y' is an intermediate state inside block b, not the completed block, and S
    is what is still masked in it. With y' = y* no block position would remain masked and the term would vanish; this
    reading keeps "within-block temporal consistency": the student's guess from less context must match its own guess
    from more context. The same-block choice also matches what the student sees at inference.
    NOTE (open too): the DLM term keeps blocks before a block of its own clean and masks only that block, as at
    inference. Its rows batch['gt'] need not be the trajectories' problems: distill.py draws them from the whole
    training split, so that the student keeps what its teacher knew beyond the few thousand problems it decoded.
    distill_temp: the teacher's stored log-probs are divided by it before the softmax; 1 is the paper's target, below
    1 sharpens it toward the token the teacher chose. NOTE: not in CDLM; it is the idea of dParallel's certainty
    forcing (Chen et al., arXiv 2509.26488): a student that must be sure sooner commits more tokens per pass
    (EXPERIMENTS.md, 2026-11-30: a sharper distillation target).
    The caller weighs the terms; one whose weight is 0 is reported as 0 and its forward pass skipped.
    """
    x, step_of, gt = batch['x'], batch['step_of'].long(), batch['gt']
    N, T = x.shape
    L, dev = T - prompt_len, x.device
    k_y, k_y2, b, U, S = sample_states(x, step_of, prompt_len, block_size, generator)
    attn_mask = attention_mask('block_causal', T, prompt_len, block_size, device=dev)
    inputs = [trajectory_state(x, step_of, prompt_len, k_y)]
    if w_dlm:  # ground truth, a block b_gt of its own: blocks < b_gt clean, b_gt masked at rate t, later ones unseen
        b_gt = decoded_block(gt[:, prompt_len:], block_size, torch.rand(len(gt), generator=generator, device=dev))
        t = antithetic_t(len(gt), generator=generator, device=dev)
        xt, hidden = mask_block(gt[:, prompt_len:], b_gt, block_size, t, generator)
        inputs.append(torch.cat([gt[:, :prompt_len], xt], dim=1))
    logits = model(torch.cat(inputs), attn_mask)[:, prompt_len:]  # (N or 2N, L, V-1)
    p_teacher = torch.zeros(N, L, logits.shape[-1], device=dev).scatter_(
        -1, batch['top_idx'].long(), (batch['top_logp'].float() / distill_temp).softmax(-1))  # over the top K
    out = dict(loss_distill=kl_loss(p_teacher, logits[:N], U))
    zero = logits.new_zeros(())
    if w_cons:
        with torch.no_grad():  # sg[.]: the later state is a target, not a path for gradients
            target = model(trajectory_state(x, step_of, prompt_len, k_y2), attn_mask)[:, prompt_len:]
            target = target.float().softmax(-1)
        out['loss_cons'] = kl_loss(target, logits[:N], S)
    else:
        out['loss_cons'] = zero
    out['loss_dlm'] = mdm_loss(logits[N:], gt[:, prompt_len:], hidden, t, block_size) if w_dlm else zero
    return out


# -----------------------------------------------------------------------------
# evaluation: strict accuracy on corpus problems


def evaluate(model, problems, prompt_len, gen_len, block_size, attn, device, batch_size=100, **decode_kw):
    """Decode problems (prompt, response, family) with generate (generate_ar for attn='causal') and score them with
    the strict checker (data/tasks.py). Returns per-problem lists strict, answer, nfe, text, and `seconds`: the
    decoding calls alone (no tokenizing or scoring), so batch_size=1 gives the latency of one request."""
    enc = get_tokenizer()
    out = dict(strict=[], answer=[], nfe=[], text=[], seconds=0.0)
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        prompt = torch.tensor([encode_prompt(enc, p, prompt_len) for p, _, _ in chunk], device=device)
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device):
            if attn == 'causal':
                res = generate_ar(model, prompt, gen_len, **decode_kw)
            else:
                res = generate(model, prompt, gen_len, block_size, attn=attn, **decode_kw)
        synchronize(device)
        out['seconds'] += time.perf_counter() - t0
        for (p, _, _), row, n in zip(chunk, res['x'][:, prompt_len:], res['nfe'].tolist()):
            text = decode_response(enc, row)
            strict, answer = tasks.check(p, text)
            out['strict'].append(strict)
            out['answer'].append(answer)
            out['nfe'].append(n)
            out['text'].append(text)
    return out


def summarize(res, problems, gen_len, block_size):
    """Per-family figures for a decode from `evaluate`: strict and answer-only accuracy, mean NFE, NFE per decoded
    block (all passes over the blocks up to the one holding the first EOS, so above block_size when a rule without
    early stop also decodes the blocks after it; a fully predictable task needs 1.0), and tokens per step
    (the answer's tokens and its EOS per forward pass: padding after the EOS is not counted as work)."""
    enc, out = get_tokenizer(), {}
    for fam in sorted({q[2] for q in problems}):
        idx = [i for i, q in enumerate(problems) if q[2] == fam]
        n_tok = [generated_tokens(enc, res['text'][i], gen_len) for i in idx]
        nfe = sum(res['nfe'][i] for i in idx)
        out[fam] = dict(acc=sum(res['strict'][i] for i in idx) / len(idx),
                        answer_acc=sum(res['answer'][i] for i in idx) / len(idx), nfe=nfe / len(idx),
                        nfe_per_block=nfe / sum(math.ceil(n / block_size) for n in n_tok),
                        tokens_per_step=sum(n_tok) / nfe)
    return out


# =============================================================================
# plumbing: what every script needs around the method, and nothing of the method itself

# -----------------------------------------------------------------------------
# config: nanoGPT-style globals, overridden by --key=value, without exec


def fail(msg):
    """Stop a script with a one-line message and exit status 1, no traceback."""
    raise SystemExit(f'error: {msg}')


def train_or_finish(ckpt_path, script, args, what):
    """Make sure `ckpt_path` holds a finished run: train it with `script` (another of the scripts, given `args`) when
    it is missing, or resume that script when the checkpoint stopped short of its max_iters (an interrupted run).
    On Ctrl-C, which reaches the child too, wait while it saves its checkpoint, then exit with status 130."""
    stored, why = load_torch(ckpt_path, keys=('iter_num', 'config'))
    if why not in ('', 'missing'):
        fail(f'{ckpt_path} is {why}; delete it and rerun to train the {what} again')
    if stored is not None and stored['iter_num'] >= stored['config']['max_iters']:
        return
    print(f'no {what} at {ckpt_path}: training it with {os.path.basename(script)}' if stored is None else
          f'{ckpt_path} stopped at iter {stored["iter_num"]} of {stored["config"]["max_iters"]}: finishing it',
          flush=True)
    proc = subprocess.Popen([sys.executable, script, *args] + ['--init_from=resume'] * (stored is not None))
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        sys.exit(130)
    if proc.returncode:
        fail(f'training the {what} failed (exit {proc.returncode}); see its output above')


def configure(scope, argv=None, doc='', rules=None):
    """Apply `--key=value` overrides to the config in `scope` (a script's globals(): every public int, float, bool,
    str or None) in place, check it against `rules` (check_config) and return it. Values take the default's type (int
    -> float is fine, `None` is allowed, a bare `--flag` sets a boolean); an unknown key or a wrong type stops with a
    one-line error; `--help` prints the defaults.
    >>> configure({'lr': 1e-3, 'compile': False}, ['--lr=3e-4', '--compile'])
    {'lr': 0.0003, 'compile': True}
    """
    config = {k: v for k, v in scope.items()
              if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))}
    for arg in sys.argv[1:] if argv is None else argv:
        if arg in ('-h', '--help'):
            print(doc.strip() + '\n\nconfig (override with --key=value):')
            for k, v in config.items():
                print(f'  --{k}={v}')
            sys.exit(0)
        if arg.startswith('--') and '=' not in arg and isinstance(config.get(arg[2:]), bool):
            arg += '=true'  # a bare --flag switches a boolean on
        if not arg.startswith('--') or '=' not in arg:
            fail(f'bad argument {arg!r}: expected --key=value (see --help)')
        key, val = arg[2:].split('=', 1)
        if key not in config:
            fail(f'unknown config key {key!r}; valid keys: {", ".join(config)}')
        config[key] = _coerce(key, val, config[key])
    scope.update(config)
    here = os.path.dirname(os.path.abspath(scope['__file__'])) if '__file__' in scope else os.getcwd()
    check_config(config, rules or {}, here)
    return config


def _coerce(key, val, default):
    if val == 'None':
        return None
    try:
        if isinstance(default, bool):
            if val.lower() not in ('true', 'false', '1', '0'):
                raise ValueError
            return val.lower() in ('true', '1')
        if isinstance(default, int):
            return int(val)
        if isinstance(default, float):
            return float(val)
    except ValueError:
        fail(f'--{key}={val}: expected a {type(default).__name__} like {default!r}')
    if default is None:  # no type to follow: take the most specific reading
        for cast in (int, float):
            with contextlib.suppress(ValueError):
                return cast(val)
    return val


RELATIONS = [  # (keys, holds(*values), what is wrong): checked wherever a script has all the keys
    (('gen_len', 'block_size'), lambda g, b: g % b == 0,
     'gen_len={gen_len} is not a multiple of block_size={block_size}'),
    (('d_model', 'n_head'), lambda d, h: d % (2 * h) == 0,
     'd_model={d_model} does not split into n_head={n_head} heads of even width (rotary turns each half of a head)'),
    (('min_lr', 'lr'), lambda m, lr: m <= lr, 'min_lr={min_lr} is above lr={lr}'),
    (('w_distill', 'w_cons', 'w_dlm'), lambda *w: sum(w) > 0, 'every loss weight is 0: nothing would be learned'),
]


def check_config(config, rules, here='.'):
    """Stop with one line naming the key, its value and what is valid, at the first setting that breaks its rule, then
    at the first broken RELATION. `rules` maps a rule to the keys it covers, as one string: '>0', '>=0', 'lo..hi'
    (inclusive), 'a|b' (one of these words), 'ints>0' and 'floats>=0' (comma-separated lists), 'device', 'folder' (can
    be written; relative to `here`), 'file' (its folder can be written) and 'name' (a file name).
    >>> check_config({'topk': 0}, {'1..257': 'topk'})  # SystemExit: error: --topk=0: must be in 1..257"""
    for rule, keys in rules.items():
        for key in keys.split():
            if why := _breaks(rule, config[key], here):
                fail(f'--{key}={config[key]}: {why}')
    for keys, holds, why in RELATIONS:
        if all(k in config for k in keys) and not holds(*(config[k] for k in keys)):
            fail(why.format(**config))


def _breaks(rule, val, here):
    """What is wrong with `val` under `rule` (see check_config), or '' when nothing is."""
    if rule in ('>0', '>=0') or '..' in rule:
        if not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val):
            return 'expected a finite number'
        lo, hi = map(float, rule.split('..')) if '..' in rule else (0.0, math.inf)
        if lo <= val <= hi and not (rule == '>0' and val == 0):
            return ''
        return {'>0': 'must be > 0', '>=0': 'must be >= 0'}.get(rule, f'must be in {rule}')
    if rule in ('ints>0', 'floats>=0'):
        cast, least = (int, 1) if rule == 'ints>0' else (float, 0)
        try:
            ok = all(cast(v) >= least for v in str(val).split(','))
        except ValueError:
            ok = False
        return '' if ok else ('expected comma-separated integers > 0, like 1,2,4' if cast is int else
                              'expected comma-separated numbers >= 0, like 0,0.5')
    if rule == 'device':
        kind, _, index = str(val).partition(':')
        if val not in ('auto', 'cpu', 'mps') and not (kind == 'cuda' and (index == '' or index.isdigit())):
            return "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        if kind == 'cuda' and not (torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count()):
            return f'no such CUDA device on this machine ({torch.cuda.device_count()} found); use --device=auto'
        if kind == 'mps' and not torch.backends.mps.is_available():
            return 'no mps device on this machine; use --device=auto'
        return ''
    if rule == 'name':  # a checkpoint's or a trajectory file's name inside out_dir
        return '' if str(val).strip() and not str(val).endswith(('/', os.sep)) else 'expected a file name'
    if rule in ('folder', 'file'):
        path = os.path.join(here, str(val))
        if rule == 'file':
            if os.path.isdir(path):
                return 'a folder, not a file'
            path = os.path.dirname(path)
        while not os.path.exists(path):  # the nearest folder that exists: the run creates the rest
            path = os.path.dirname(path)
        return (f'{path} is a file, not a folder' if not os.path.isdir(path) else
                f'cannot write in {path}' if not os.access(path, os.W_OK) else '')
    return '' if str(val) in rule.split('|') else 'use ' + ' or '.join(repr(w) for w in rule.split('|'))


# -----------------------------------------------------------------------------
# device and precision


def pick_device(name='auto'):
    """'auto' picks cuda, then mps, then cpu, and says which."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    print(f'device: {name}')
    return name


def cpu_has_bf16():
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)? Elsewhere bf16 is emulated, slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device, cpu_bf16=False):
    """bf16 autocast on CUDA. On a CPU only when asked (the scripts' --bf16, for training: 1.25-1.8x faster steps) and
    where cpu_has_bf16(); else fp32. Decoding on a CPU stays fp32: a batch-1 pass there is overhead, not arithmetic."""
    if device.startswith('cuda'):
        return torch.autocast('cuda', dtype=torch.bfloat16)
    if cpu_bf16 and device == 'cpu' and cpu_has_bf16():
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device):
    """Wait for queued GPU work before reading a clock; a no-op off CUDA."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# the training loop shared by train_teacher.py and distill.py


def cosine_lr(it, lr, min_lr, warmup_iters, max_iters):
    """Linear warm-up to lr, then cosine decay to min_lr at max_iters (nanoGPT's schedule)."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    progress = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def train_loop(step, iter_num, max_iters, eval_interval, evaluate, save, device, log_interval=50):
    """The loop of both training scripts around `step(iter_num)`, which makes one update and returns a dict of
    numbers to log (read every log_interval steps only, so a GPU is not waited for at each step). Every eval_interval
    steps and at the last one: metrics = evaluate(), then save(iter_num, metrics). Ctrl-C saves and exits with
    status 130. Returns the last metrics."""
    metrics, t0, t_start = {}, time.time(), time.time()
    try:
        while iter_num < max_iters:
            logs = step(iter_num)  # {name: number or 0-dim tensor}
            iter_num += 1
            if iter_num % log_interval == 0:
                synchronize(device)
                dt, t0 = (time.time() - t0) / log_interval, time.time()
                print(f'iter {iter_num}: ' + ', '.join(f'{k} {v:.4g}' for k, v in logs.items())
                      + f', {dt * 1000:.0f}ms/iter')
            if iter_num % eval_interval == 0 or iter_num == max_iters:
                metrics = evaluate()
                print(f'eval {iter_num}: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items())
                      + f', {(time.time() - t_start) / 60:.1f} min')
                save(iter_num, metrics)
                t0 = time.time()
    except KeyboardInterrupt:
        print(f'\ninterrupted at iter {iter_num}')
        save(iter_num, metrics)
        sys.exit(130)
    print(f'done: {iter_num} iters in {(time.time() - t_start) / 60:.1f} min')
    return metrics


def make_optimizer(model, name, lr, weight_decay=0.0):
    """'adamw': AdamW on every weight. 'muon': Muon (Jordan et al., 2024; torch.optim.Muon) on the weight matrices of
    the transformer blocks, AdamW on the rest (embeddings, head, norms, biases). Muon orthogonalizes each matrix's
    momentum before it steps, so every direction of the matrix moves at one rate; Moonshot's scaling
    (`match_rms_adamw`, Liu et al., arXiv 2502.16982) gives its steps AdamW's size, so both share one lr and schedule.
    The teacher learns about twice as fast per step with it (EXPERIMENTS.md, 2026-12-08)."""
    adamw = lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if name == 'adamw':
        return adamw(model.parameters())
    is_matrix = {n: n.startswith('blocks.') and p.dim() == 2 for n, p in model.named_parameters()}
    matrices = [p for n, p in model.named_parameters() if is_matrix[n]]
    return Optimizers(adamw([p for n, p in model.named_parameters() if not is_matrix[n]]),
                      torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn='match_rms_adamw'))


class Optimizers:
    """Several torch optimizers, each over its own parameters, used as one: optimizer_step sets the lr of every
    param group, and a checkpoint saves and loads their states as a list."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def state_dict(self):
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states):
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def optimizer_step(model, optimizer, loss, lr, grad_clip):
    """One update at learning rate lr: backward, clip the gradient norm to grad_clip (0 = off), step."""
    for group in optimizer.param_groups:
        group['lr'] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


# -----------------------------------------------------------------------------
# checkpoints: plain dicts that load with torch.load(weights_only=True), written atomically


def save_checkpoint(path, model, kind, config, iter_num, metrics, optimizer=None):
    """kind is 'teacher', 'student' or 'ar'. The state dict is the uncompiled model's (no `_orig_mod.` prefix)."""
    model = getattr(model, '_orig_mod', model)
    ckpt = dict(kind=kind, model=model.state_dict(), model_args=model.args, config=config, iter_num=iter_num,
                metrics={k: float(v) for k, v in metrics.items()}, tokenizer=TOKENIZER, mask_id=MASK_ID,
                block_size=config['block_size'], optimizer=optimizer.state_dict() if optimizer else None)
    save_atomic(ckpt, path)


def save_atomic(obj, path):
    """torch.save to a temporary file of its own in the same folder, then rename it over `path` in one step: a kill
    at any moment leaves the previous file whole. NOTE: two runs on one folder are safe the same way: each writes
    its own temporary file and each rename swaps in a complete file, so the last writer wins and no file is mixed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + '.', suffix='.tmp')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); give it a plain file's permissions
    try:
        with os.fdopen(fd, 'wb') as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_torch(path, keys=()):
    """(obj, '') for a torch file of this project, or (None, why): missing, unreadable, or not a dict with `keys`."""
    if not os.path.exists(path):
        return None, 'missing'
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # NOTE: cut short, not a torch file, pickled classes: torch raises many kinds of errors
        return None, f'unreadable ({type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:80]})'
    if keys and not (isinstance(obj, dict) and set(keys) <= set(obj)):
        return None, 'not a cdlm checkpoint'
    return obj, ''


def load_checkpoint(path, device='cpu', hint='python train_teacher.py', kind=None):
    """(model, ckpt). Stops with one line naming the file and the fix when it is missing, damaged, not a checkpoint,
    made with another tokenizer, of another `kind` (a string or a tuple of them) or of the wrong shape."""
    if os.path.isdir(path):
        fail(f'{path} is a folder; give the path of a checkpoint file in it')
    ckpt, why = load_torch(path, keys=('kind', 'model', 'model_args', 'config', 'iter_num'))
    if why == 'missing':
        fail(f'no checkpoint at {path}; create it with `{hint}`')
    if why:
        fail(f'{path} is {why}; delete it and create it again with `{hint}`')
    if (ckpt.get('tokenizer'), ckpt.get('mask_id')) != (TOKENIZER, MASK_ID):
        fail(f'{path} was made with tokenizer {ckpt.get("tokenizer")!r} (mask id {ckpt.get("mask_id")}); '
             f'this code uses {TOKENIZER!r} (mask id {MASK_ID}): retrain it with `{hint}`')
    kinds = (kind,) if isinstance(kind, str) else kind or ()
    if kinds and ckpt['kind'] not in kinds:
        fail(f'{path} holds a model of kind {ckpt["kind"]!r}, not {" or ".join(map(repr, kinds))}')
    try:
        model = Transformer(**ckpt['model_args'])
        model.load_state_dict(ckpt['model'])
    except (TypeError, RuntimeError) as e:
        fail(f'{path} has weights that do not fit its model_args ({type(e).__name__}); retrain it with `{hint}`')
    ckpt['config'].setdefault('corpus', 'full')  # saved before --corpus existed, when there was only the full corpus
    return model.to(device), ckpt
