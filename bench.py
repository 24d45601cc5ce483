"""
One run, four tables: the CDLM student against the baselines the paper names and a same-size autoregressive model,
measured side by side on this machine. Absolute times are noisy; ratios taken in one run, with every row timed in
turn within each round, much less so.

    python bench.py                              # checkpoints from out/ (python distill.py makes them)
    python bench.py --quick                      # tiny random-init models, about a minute on a CPU (smoke test)
    python bench.py --compile                    # the same decoders, torch.compile'd (CUDA: CUDA graphs)

Rows, all greedy:
  teacher 1 token/step (vanilla, no cache) | teacher naive step truncation to the student's budget |
  teacher threshold (Fast-dLLM, no cache)  | student uncached | student cached | autoregressive model with a KV cache.
Tables:
  1. accuracy and steps on the whole test split, and the latency of one request (batch 1) with its speed-up; then the
     accuracy-NFE frontier: the teacher's threshold rule and the cached student at each tau, per family, plotted;
  2. throughput in generated tokens/s (the answer and its EOS) at each batch size, on the same math test problems,
     with the FLOP/s each row achieves (FLOPs counted from the shapes of the passes it ran) against this machine's
     matmul peak and memory bandwidth, both measured in the same run;
  3. per batch size, the cache's speed-up and the cached student against the vanilla teacher;
  4. cache scaling: a random-init student with and without its cache as the generated length grows (batch 1).
A batch decodes in lockstep: a block's passes go on while any row still has a mask in it, and each pass computes every
row, so a batch pays for its slowest row. `passes` counts the passes actually run; `nfe` the passes each row needed.
The autoregressive model has the same width, depth and corpus; when missing it is trained with train_teacher.py
--objective=ar for the teacher's number of steps and batch size, so the same training compute.
"""
import hashlib
import json as jsonlib
import math
import os
import platform
import statistics
import time

import torch
from tqdm import tqdm

import cdlm

# -----------------------------------------------------------------------------
out_dir = 'out'  # where the checkpoints are
teacher_ckpt = 'teacher.pt'  # from train_teacher.py or distill.py
student_ckpt = 'student.pt'  # from distill.py
ar_ckpt = 'ar.pt'  # trained here when missing
threshold = 0.9  # tau for threshold decoding
frontier = '0.5,0.7,0.8,0.9,0.95,0.99'  # the thresholds of the accuracy-NFE frontier
fix_below = 0.1  # correction re-masks every character the teacher finds less likely than this (sample.py --correct)
timed_problems = 128  # math test problems every row decodes at every batch size (a multiple of the largest batch)
batches = '1,8,32,128'  # batch sizes of the throughput sweep; batch 1, the latency of one request, always runs
repeats = 3  # timed rounds, each timing every row at every batch size in turn; the median is reported
scaling = '1,2,4,8'  # cache scaling: generation lengths as multiples of gen_len
quick = False  # tiny random-init models instead of checkpoints: a smoke test of the whole script
compile = False  # time torch.compile'd teacher and student (cdlm.compile_decoder; the AR model stays eager)
json = 'out/bench.json'  # every figure, with the device, torch version and config
device = 'auto'  # 'auto', 'cpu', 'cuda', 'mps'
threads = 0  # torch CPU threads, 0 = one per core
seed = 1337
config = cdlm.configure(globals(), doc=__doc__, rules={  # --key=value overrides, checked before any work; --help
    '>0': 'timed_problems repeats', '>=0': 'threads seed', '0..1': 'threshold fix_below', 'ints>0': 'batches scaling',
    'floats>=0': 'frontier', 'folder': 'out_dir', 'file': 'json', 'name': 'teacher_ckpt student_ckpt ar_ckpt', 'device': 'device'})
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
torch.set_num_threads(threads or os.cpu_count())
device = cdlm.pick_device(device)
here = os.path.dirname(os.path.abspath(__file__))
path = {name: os.path.join(here, out_dir, f) for name, f in
        (('teacher', teacher_ckpt), ('student', student_ckpt), ('ar', ar_ckpt))}

if quick:  # shapes of the real thing, random weights: accuracy is meaningless, timings and plumbing are not
    prompt_len, gen_len, block_size, corpus = 24, 48, 16, 'full'
    models = {k: cdlm.Transformer(seq_len=prompt_len + gen_len * 8, n_layer=2, n_head=2, d_model=32).to(device).eval()
              for k in ('teacher', 'student', 'ar')}
else:
    # the same-size autoregressive model: the teacher's shape, steps and batch size (trained, or finished, when needed)
    c = cdlm.load_checkpoint(path['teacher'], device, hint='python distill.py', kind='teacher')[1]['config']
    keys = ('corpus', 'prompt_len', 'gen_len', 'block_size', 'code_weight', 'n_layer', 'n_head', 'd_model',
            'batch_size', 'max_iters', 'lr', 'optimizer', 'bf16', 'seed')
    cdlm.train_or_finish(path['ar'], os.path.join(here, 'train_teacher.py'),
                         ['--objective=ar', f'--out_dir={out_dir}', f'--ckpt_name={ar_ckpt}', f'--device={device}',
                          f'--threads={threads}']
                         + [f'--{k}={c[k]}' for k in keys if k in c], 'autoregressive model')
    models, metas = {}, {}
    for name in ('teacher', 'student', 'ar'):
        models[name], metas[name] = cdlm.load_checkpoint(path[name], device, hint='python distill.py', kind=name)
        models[name].eval()
    c = metas['student']['config']
    prompt_len, gen_len, block_size = c['prompt_len'], c['gen_len'], metas['student']['block_size']
    corpus = c['corpus']
    for name in ('teacher', 'ar'):
        if metas[name]['model_args'] != metas['student']['model_args']:
            cdlm.fail(f'{path[name]} has shape {metas[name]["model_args"]}, '
                      f'the student {metas["student"]["model_args"]}')
        if (other := metas[name]['config']['corpus']) != corpus:
            cdlm.fail(f'{path[name]} was trained on --corpus={other}, the student on {corpus}')

# --compile times compiled teacher and student (the AR model stays eager: see cdlm.compile_decoder); the accuracy
# table and the pass counts use the eager models, and the sweep checks that the timed models decode the same tokens
timed_models = {k: cdlm.compile_decoder(m, device) if compile and k != 'ar' else m for k, m in models.items()}
test = cdlm.tasks.build_splits(corpus=corpus)['test']
if quick:
    test = cdlm.tasks.per_family(test, 64)
timed = cdlm.tasks.of_family(test, 'math')[:timed_problems]
batch_sizes = sorted({1} | {min(int(b), len(timed)) for b in batches.split(',')})


def decode(name, attn, rule, problems, batch_size=100, compiled=False):
    return cdlm.evaluate((timed_models if compiled else models)[name], problems, prompt_len, gen_len, block_size, attn,
                         device, batch_size=batch_size, **rule)


def digest(texts):
    """A short hash of decoded texts: equal hashes mean token-identical outputs (the same checkpoints and rule)."""
    return hashlib.sha1('\n'.join(texts).encode()).hexdigest()[:12]


# the rows: student first, since naive truncation gets the student's step budget
rules = {
    'student, cached': ('student', 'block_causal', dict(k=None, threshold=threshold, use_cache=True)),
    'student, uncached': ('student', 'block_causal', dict(k=None, threshold=threshold, use_cache=False)),
    'teacher, 1 token/step': ('teacher', 'bidirectional', dict(k=1, threshold=None, early_stop=False)),
    f'teacher, threshold {threshold}': ('teacher', 'bidirectional', dict(k=None, threshold=threshold)),
    'teacher, truncated': None,  # filled in below
    'autoregressive, cached': ('ar', 'causal', dict(use_cache=True)),
}
rows, outputs, decoded = {}, {}, {}
t_start = time.perf_counter()
for name in list(rules):  # accuracy: every test problem, batched
    if name == 'teacher, truncated':  # the same number of passes as the student, spread evenly over the blocks
        budget = max(1, round(rows['student, cached']['nfe_math'] / (gen_len // block_size)))
        k = math.ceil(block_size / budget)
        rules[name] = ('teacher', 'bidirectional', dict(k=k, threshold=None, early_stop=False))
        name_shown = f'teacher, truncated to {math.ceil(block_size / k)} steps/block'
    res = decoded[name] = decode(*rules[name], test)
    outputs[name] = res['text']
    f = cdlm.summarize(res, test, gen_len, block_size)
    rows[name] = dict(acc_math=f['math']['acc'], acc_code=f['code']['acc'], answer_acc_math=f['math']['answer_acc'],
                      nfe_math=f['math']['nfe'], tokens_per_step=f['math']['tokens_per_step'],
                      outputs_sha1=digest(res['text']))
    print(f'{name}: {rows[name]}')
rows['student, cached']['match'] = rows['student, uncached']['match'] = outputs['student, cached'] == outputs[
    'student, uncached']
print(f'accuracy in {time.perf_counter() - t_start:.0f} s')


def plot(title, series, width=60):
    """A text scatter plot of accuracy (up: eleven rows from the tenth at or below the lowest point, at most 90%, to
    100%) against mean NFE (right, from 0). series: {mark: [(nfe, acc), ...]}; a cell two series share shows '*'."""
    points = [p for pts in series.values() for p in pts]
    x_hi = 4 * math.ceil(max(x for x, _ in points) * 1.05 / 4)  # the axis ends on a multiple of 4: round ticks
    y_lo = min(math.floor(min(y for _, y in points) * 10) / 10, 0.9)
    grid = [[' '] * width for _ in range(11)]  # row 0 is 100%, row 10 is y_lo
    for mark, pts in series.items():
        for x, y in pts:
            row, col = round((1 - y) / (1 - y_lo) * 10), min(width - 1, round(x / x_hi * width))
            grid[row][col] = mark if grid[row][col] in (' ', mark) else '*'
    lines = [title] + [(f'{1 - i / 10 * (1 - y_lo):5.0%} |' if i % 2 == 0 else '      |') + ''.join(cells)
                       for i, cells in enumerate(grid)]
    ticks = ''.join(f'{x_hi * j / 4:<{width // 4}g}' for j in range(4))
    return lines + ['      +' + '-' * width, f'       {ticks}{x_hi:g} mean NFE']


# the accuracy-NFE frontier: both threshold rules of the table above at every tau, on the whole test split (the
# table's own decode stands in at tau = threshold)
taus = sorted(float(t) for t in frontier.split(','))
curves = {'teacher, threshold': f'teacher, threshold {threshold}', 'student, cached': 'student, cached'}
front = {name: [] for name in curves}
for name, row in curves.items():
    model_name, attn, rule = rules[row]
    for tau in tqdm(taus, desc=f'frontier: {name}', unit='tau'):
        res = decoded[row] if tau == threshold else decode(model_name, attn, dict(rule, threshold=tau), test)
        f = cdlm.summarize(res, test, gen_len, block_size)
        front[name].append(dict(tau=tau, **{f'{k}_{fam}': f[fam][k] for fam in f for k in ('acc', 'nfe')}))
print('\n| tau | teacher math acc / NFE | student math acc / NFE | teacher code acc / NFE | student code acc / NFE |')
print('|---|---|---|---|---|')
for t, s in zip(front['teacher, threshold'], front['student, cached']):
    print(f'| {t["tau"]} | ' + ' | '.join(f'{r[f"acc_{fam}"]:.1%} / {r[f"nfe_{fam}"]:.2f}' for fam in ('math', 'code')
                                          for r in (t, s)) + ' |')
for fam in ('math', 'code'):
    pts = {mark: [(r[f'nfe_{fam}'], r[f'acc_{fam}']) for r in front[name]]
           for mark, name in (('T', 'teacher, threshold'), ('S', 'student, cached'))}
    print('\n' + '\n'.join(plot(f'{fam}: strict accuracy against passes, tau {taus[0]}-{taus[-1]} '
                                 '(T teacher at threshold, S cached student)', pts)))
    # the student's curve lies above and to the left where no teacher point has both fewer passes and more accuracy
    for r in front['student, cached']:
        if beaten := [t['tau'] for t in front['teacher, threshold']
                      if t[f'nfe_{fam}'] <= r[f'nfe_{fam}'] and t[f'acc_{fam}'] > r[f'acc_{fam}']]:
            print(f'{fam}: the student at tau {r["tau"]} is below the teacher at tau {beaten} '
                  '(as few passes or fewer, more accuracy)')


# what only a bidirectional model can do, on the reference responses of the test split: fill in masked characters
# with the rest given, and correct changed characters (README, Infilling and correction)
enc = cdlm.get_tokenizer()
ref = torch.tensor([cdlm.encode_example(enc, p, r, prompt_len, gen_len) for p, r, _ in test], device=device)
col = torch.arange(gen_len, device=device)
n_text = torch.tensor([len(r) for _, r, _ in test], device=device)[:, None]  # (N, 1) characters of each response
n_cot = torch.tensor([r.index('####') for _, r, _ in test], device=device)[:, None]  # the answer starts here
alphabet = torch.tensor(enc.encode_ordinary('0123456789+-*<>=;# '), device=device)  # every character of a response
g = torch.Generator(device).manual_seed(seed)


def refill(name, attn, canvas, rule, fix=False):
    """Decode the masked positions of each canvas (N, L) with the rest given, or with fix=True correct each response
    (cdlm.correct). Returns the strict verdicts, the passes per row (with correction's scoring pass) and the
    final responses (N, L)."""
    xs, nfe = [], []
    for i in range(0, len(test), 100):
        prompt = ref[i:i + 100, :prompt_len]
        if fix:
            out = cdlm.correct(models[name], torch.cat([prompt, canvas[i:i + 100]], 1), prompt_len, block_size,
                               fix_below, **rule)
        else:
            out = cdlm.generate(models[name], prompt, gen_len, block_size, attn=attn, canvas=canvas[i:i + 100], **rule)
        xs.append(out['x'][:, prompt_len:])
        nfe += out['nfe'].tolist()
    x = torch.cat(xs)
    strict = [cdlm.tasks.check(p, cdlm.decode_response(enc, row))[0] for (p, _, _), row in zip(test, x)]
    return strict, nfe, x


bidir = {'teacher': {}, 'student, cached': {}}
teacher_rule, student_rule = rules[f'teacher, threshold {threshold}'][2], rules['student, cached'][2]
for task, hide in (('chain of thought given the answer', col[None] < n_cot),
                   ('answer given the chain of thought', (col[None] >= n_cot) & (col[None] < n_text))):
    for name, attn, rule in (('teacher', 'bidirectional', teacher_rule), ('student', 'block_causal', student_rule)):
        if name == 'student' and task.startswith('chain'):
            continue  # a block-causal model decodes the chain of thought without seeing the answer after it
        strict, nfe, _ = refill(name, attn, ref[:, prompt_len:].masked_fill(hide, cdlm.MASK_ID), rule)
        bidir['teacher' if name == 'teacher' else 'student, cached'][f'infill {task}'] = dict(
            acc=statistics.mean(strict), nfe=statistics.mean(nfe))
index = (ref[:, prompt_len:, None] == alphabet).int().argmax(-1)  # each response character's place in the alphabet
for n in (0, 1, 2, 4):  # correction: n random characters of each response changed to other response characters
    score = torch.rand(ref.shape[0], gen_len, generator=g, device=device).masked_fill(col[None] >= n_text, -1)
    changed = torch.zeros_like(score, dtype=torch.bool).scatter_(1, score.topk(max(n, 1), -1).indices, n > 0)
    shift = torch.randint(1, len(alphabet), score.shape, generator=g, device=device)  # never the same character
    given = torch.where(changed, alphabet[(index + shift) % len(alphabet)], ref[:, prompt_len:])
    strict, nfe, x = refill('teacher', 'bidirectional', given, teacher_rule, fix=True)
    kept = ~changed & (col[None] < n_text)  # the characters that were right before correction
    bidir['teacher'][f'correct {n} changed'] = dict(
        restored=statistics.mean(strict), wrong=1 - statistics.mean(strict),
        harm=((x != given) & kept).sum().item() / kept.sum().item(), nfe=statistics.mean(nfe))
print('\n| infilling and correction (test split) | teacher | student, cached |\n|---|---|---|')
for task in ('chain of thought given the answer', 'answer given the chain of thought'):
    cells = [f'{r["acc"]:.1%} strict, {r["nfe"]:.2f} passes' if (r := bidir[m].get(f'infill {task}')) else
             'cannot: its blocks never see the answer after them' for m in ('teacher', 'student, cached')]
    print(f'| infill the {task} | ' + ' | '.join(cells) + ' |')
for n in (0, 1, 2, 4):
    r = bidir['teacher'][f'correct {n} changed']
    print(f'| correct {n} changed characters | {r["restored"]:.1%} valid after, {r["harm"]:.2%} of right characters '
          f'changed, {r["nfe"]:.2f} passes | cannot: a position is scored without the blocks after it |')


def count_passes(model_name, attn, rule, batch_size):
    """Decode the timed problems once with a hook on the eager model that records every forward pass as
    (rows, new tokens, keys attended): the passes actually run, lockstep included, for the FLOP and byte counts."""
    model, passes = models[model_name], []

    def hook(module, args, kwargs):
        idx, cache = args[0], args[2] if len(args) > 2 else kwargs.get('cache')
        passes.append((idx.shape[0], idx.shape[1], (len(cache) if cache is not None else 0) + idx.shape[1]))
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        res = cdlm.evaluate(model, timed, prompt_len, gen_len, block_size, attn, device, batch_size=batch_size, **rule)
    finally:
        handle.remove()
    return passes, res


# FLOPs and bytes of one pass from the shapes: 2 FLOPs per weight per token in the matmuls plus QK^T and AV; bytes =
# the weights once plus every row's keys and values (bf16 on CUDA under autocast, else fp32). Activations and logits
# are not counted, so at large batches the FLOP/byte is an upper bound.
L, d, V = (models['student'].args[k] for k in ('n_layer', 'd_model', 'vocab_size'))
n_matmul = L * 12 * d ** 2 + d * (V - 1)  # the weights used in matmuls
bytes_w = 2 if device.startswith('cuda') else 4


def flops_bytes(passes):
    """FLOPs and bytes of the passes (rows, new tokens, keys attended) recorded by count_passes."""
    flops = sum(2 * n_matmul * b * q + 4 * L * b * q * kv * d for b, q, kv in passes)
    bytes_ = sum(bytes_w * (n_matmul + 2 * L * b * kv * d) for b, q, kv in passes)
    return flops, bytes_


def measure_peak():
    """(FLOP/s, bytes/s): the best of 5 timings of a large matmul and of a large copy into a buffer allocated once
    (a fresh one would time page faults too), in decoding's dtype."""
    n, dtype = (8192, torch.bfloat16) if device.startswith('cuda') else (2048, torch.float32)
    x, big = torch.randn(n, n, device=device, dtype=dtype), torch.ones(2 ** 26, device=device, dtype=dtype)
    dst, best = torch.zeros_like(big), []
    for fn in (lambda: x @ x, lambda: dst.copy_(big)):
        times = []
        for _ in range(6):  # the first call warms up
            cdlm.synchronize(device)
            t0 = time.perf_counter()
            fn()
            cdlm.synchronize(device)
            times.append(time.perf_counter() - t0)
        best.append(min(times[1:]))
    return 2 * n ** 3 / best[0], 2 * big.numel() * big.element_size() / best[1]


# the sweep: one untimed pass per row and batch size counts the passes (and warms up, or compiles), then `repeats`
# rounds time every row at every batch size in turn, so a slow spell of the machine hits all rows alike
peak_flops, peak_bw = measure_peak()
shape, t_warm = {}, time.perf_counter()
for b in batch_sizes:
    for name, rule in rules.items():
        passes, res = count_passes(*rule, b)
        decode(*rule, timed if compile else timed[:b], batch_size=b, compiled=True)  # warm-up, or every compilation
        n_tokens = sum(cdlm.generated_tokens(enc, t, gen_len) for t in res['text'])
        shape[name, b] = dict(passes=len(passes), tokens=n_tokens, text=res['text'])
        shape[name, b]['flops'], shape[name, b]['bytes'] = flops_bytes(passes)
warmup_s = time.perf_counter() - t_warm
print(f'passes counted and models warmed up{" and compiled" if compile else ""} in {warmup_s:.0f} s')
seconds, texts = {key: [] for key in shape}, {}
for _ in tqdm(range(repeats), desc='timing', unit='round'):
    for b in batch_sizes:
        for name, rule in rules.items():
            res = decode(*rule, timed, batch_size=b, compiled=True)
            seconds[name, b].append(res['seconds'])
            texts[name, b] = res['text']
sweep = []
for (name, b), s in shape.items():
    sec = statistics.median(seconds[name, b])
    roof = max(s['flops'] / peak_flops, s['bytes'] / peak_bw)  # the roofline's time for this work
    sweep.append(dict(row=name, batch=b, seconds=sec, tokens_per_s=s['tokens'] / sec, passes=s['passes'],
                      flop_per_byte=s['flops'] / s['bytes'], achieved_flops=s['flops'] / sec,
                      peak_share=s['flops'] / sec / peak_flops, roofline_share=roof / sec,
                      bound='compute' if s['flops'] / peak_flops > s['bytes'] / peak_bw else 'memory',
                      same_tokens=texts[name, b] == s['text'] == [t for t, q in zip(outputs[name], test)
                                                                   if q in timed]))
by = {(r['row'], r['batch']): r for r in sweep}
for name, r in rows.items():  # batch 1: the latency of one request
    r['latency_s'] = by[name, 1]['seconds'] / len(timed)
    r['tokens_per_s'] = by[name, 1]['tokens_per_s']
for r in rows.values():
    r['speedup'] = rows['teacher, 1 token/step']['latency_s'] / r['latency_s']

print('\n| decoding | math acc | code acc | math NFE | tokens/step | latency (batch 1) | tokens/s | speed-up | match |')
print('|---|---|---|---|---|---|---|---|---|')
for name, r in rows.items():
    shown = name_shown if name == 'teacher, truncated' else name
    print(f'| {shown} | {r["acc_math"]:.1%} | {r["acc_code"]:.1%} | {r["nfe_math"]:.2f} | {r["tokens_per_step"]:.2f} | '
          f'{r["latency_s"] * 1000:.1f} ms | {r["tokens_per_s"]:.0f} | {r["speedup"]:.1f}x | {r.get("match", "")} |')

print(f'\nthroughput over {len(timed)} math test problems; machine: matmul {peak_flops / 1e9:.0f} GFLOP/s, copy '
      f'{peak_bw / 1e9:.1f} GB/s (ridge {peak_flops / peak_bw:.0f} FLOP/byte)')
print('| decoding | batch | tokens/s | passes | FLOP/byte | GFLOP/s | % of matmul peak | roofline bound | '
      '% of roofline | same tokens |')
print('|---|---|---|---|---|---|---|---|---|---|')
for r in sweep:
    print(f'| {r["row"]} | {r["batch"]} | {r["tokens_per_s"]:.0f} | {r["passes"]} | {r["flop_per_byte"]:.1f} | '
          f'{r["achieved_flops"] / 1e9:.2f} | {r["peak_share"]:.1%} | {r["bound"]} | {r["roofline_share"]:.1%} | '
          f'{r["same_tokens"]} |')
tps = {key: r['tokens_per_s'] for key, r in by.items()}
ratios = [dict(batch=b, cache_speedup=tps['student, cached', b] / tps['student, uncached', b],
               cached_vs_vanilla=tps['student, cached', b] / tps['teacher, 1 token/step', b]) for b in batch_sizes]
print('\n| batch | cached / uncached student | cached student / vanilla teacher |\n|---|---|---|')
for r in ratios:
    print(f'| {r["batch"]} | {r["cache_speedup"]:.2f}x | {r["cached_vs_vanilla"]:.1f}x |')

# cache scaling: a random-init student-shaped model, so only speed is measured; 2 steps per block keeps NFE fixed
args = dict(models['student'].args)
mults = [int(m) for m in scaling.split(',')]
args['seq_len'] = prompt_len + gen_len * max(mults)
scale_model = cdlm.Transformer(**args).to(device).eval()
scaling_rows = []
for m in mults:
    times = {}
    for use_cache in (False, True):
        runs = [cdlm.evaluate(scale_model, timed[:1], prompt_len, gen_len * m, block_size, 'block_causal', device,
                              batch_size=1, use_cache=use_cache, k=block_size // 2, threshold=None,
                              early_stop=False)['seconds'] for _ in range(repeats + 1)]
        times[use_cache] = statistics.median(runs[1:])  # the first run is a warm-up
    scaling_rows.append(dict(gen_len=gen_len * m, uncached_s=times[False], cached_s=times[True],
                             speedup=times[False] / times[True]))
print('\n| gen_len | uncached | cached | cache speed-up |\n|---|---|---|---|')
for r in scaling_rows:
    print(f'| {r["gen_len"]} | {r["uncached_s"] * 1000:.1f} ms | {r["cached_s"] * 1000:.1f} ms | {r["speedup"]:.2f}x |')

device_name = torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor()
result = dict(device=device, device_name=device_name, torch=torch.__version__, config=config, rows=rows,
              frontier=front, bidirectional=bidir, sweep=sweep, ratios=ratios,
              peak=dict(flops=peak_flops, bytes_per_s=peak_bw), warmup_s=warmup_s, cache_scaling=scaling_rows)
out = os.path.join(here, json)
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, 'w') as fh:
    jsonlib.dump(result, fh, indent=1)
print(f'wrote {out} in {(time.perf_counter() - t_start) / 60:.1f} min')
print(jsonlib.dumps({f'batch {r["batch"]}': dict(cache=round(r['cache_speedup'], 2), vs_vanilla=round(
    r['cached_vs_vanilla'], 1)) for r in ratios}))
