"""
One run, one table: the CDLM student against the baselines the paper names and a same-size autoregressive model,
measured side by side on this machine. Absolute times are noisy; ratios taken in one run, with every timed problem
decoded by every row in turn, much less so.

    python bench.py                              # checkpoints from out/ (python distill.py makes them)
    python bench.py --quick                      # tiny random-init models, about a minute on a CPU (smoke test)
    python bench.py --peak_tflops=990 --peak_gbps=3350 --device=cuda   # add the roofline bound (H100 SXM, bf16)

Rows, all greedy at batch 1 after a warm-up, median of `repeats` timed rounds:
  teacher 1 token/step (vanilla, no cache) | teacher naive step truncation to the student's budget |
  teacher threshold (Fast-dLLM, no cache)  | student uncached | student cached | autoregressive model with a KV cache.
The autoregressive model has the same width, depth and corpus; when missing it is trained with train_teacher.py
--objective=ar for the teacher's number of steps and batch size, so the same training compute.
"""
import json as jsonlib
import math
import os
import platform
import statistics

import torch
from tqdm import tqdm

import cdlm

# -----------------------------------------------------------------------------
out_dir = 'out'  # where the checkpoints are
teacher_ckpt = 'teacher.pt'  # from train_teacher.py or distill.py
student_ckpt = 'student.pt'  # from distill.py
ar_ckpt = 'ar.pt'  # trained here when missing
threshold = 0.9  # tau for threshold decoding
timed_problems = 50  # math test problems decoded at batch 1 per row for latency
repeats = 5  # timed rounds, each decoding every timed problem with every row in turn; the median is reported
scaling = '1,2,4,8'  # cache scaling: generation lengths as multiples of gen_len
peak_tflops = 0.0  # > 0: the device's peak TFLOP/s, for the roofline bound
peak_gbps = 0.0  # > 0: the device's memory bandwidth in GB/s, for the roofline bound
quick = False  # tiny random-init models instead of checkpoints: a smoke test of the whole script
json = 'out/bench.json'  # every figure, with the device, torch version and config
device = 'cpu'  # 'auto', 'cpu', 'cuda', 'mps'
threads = 0  # torch CPU threads, 0 = one per core
seed = 1337
config = cdlm.configure(globals(), doc=__doc__, rules={  # --key=value overrides, checked before any work; --help
    '>0': 'timed_problems repeats', '>=0': 'peak_tflops peak_gbps threads seed', '0..1': 'threshold',
    'ints>0': 'scaling', 'folder': 'out_dir', 'file': 'json', 'device': 'device'})
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
torch.set_num_threads(threads or os.cpu_count())
device = cdlm.pick_device(device)
here = os.path.dirname(os.path.abspath(__file__))
path = {name: os.path.join(here, out_dir, f) for name, f in
        (('teacher', teacher_ckpt), ('student', student_ckpt), ('ar', ar_ckpt))}

if quick:  # shapes of the real thing, random weights: accuracy is meaningless, timings and plumbing are not
    prompt_len, gen_len, block_size = 24, 48, 16
    models = {k: cdlm.Transformer(seq_len=prompt_len + gen_len * 8, n_layer=2, n_head=2, d_model=32).to(device).eval()
              for k in ('teacher', 'student', 'ar')}
    timed_problems, repeats = min(timed_problems, 4), min(repeats, 3)
else:
    # the same-size autoregressive model: the teacher's shape, steps and batch size (trained, or finished, when needed)
    c = cdlm.load_checkpoint(path['teacher'], device, hint='python distill.py', kind='teacher')[1]['config']
    keys = ('prompt_len', 'gen_len', 'block_size', 'code_weight', 'n_layer', 'n_head', 'd_model', 'batch_size',
            'max_iters', 'lr', 'bf16')
    cdlm.train_or_finish(path['ar'], os.path.join(here, 'train_teacher.py'),
                         ['--objective=ar', f'--out_dir={out_dir}', f'--ckpt_name={ar_ckpt}', f'--device={device}']
                         + [f'--{k}={c[k]}' for k in keys if k in c], 'autoregressive model')
    models, metas = {}, {}
    for name in ('teacher', 'student', 'ar'):
        models[name], metas[name] = cdlm.load_checkpoint(path[name], device, hint='python distill.py', kind=name)
        models[name].eval()
    c = metas['student']['config']
    prompt_len, gen_len, block_size = c['prompt_len'], c['gen_len'], metas['student']['block_size']
    for name in ('teacher', 'ar'):
        if metas[name]['model_args'] != metas['student']['model_args']:
            cdlm.fail(f'{path[name]} has shape {metas[name]["model_args"]}, the student {metas["student"]["model_args"]}')

test = cdlm.tasks.build_splits()['test']
if quick:
    test = cdlm.tasks.per_family(test, 8)
timed = cdlm.tasks.of_family(test, 'math')[:timed_problems]


def decode(name, attn, rule, problems, batch_size=100):
    return cdlm.evaluate(models[name], problems, prompt_len, gen_len, block_size, attn, device, batch_size=batch_size,
                         **rule)


# the rows: student first, since naive truncation gets the student's step budget
rules = {
    'student, cached': ('student', 'block_causal', dict(k=None, threshold=threshold, use_cache=True)),
    'student, uncached': ('student', 'block_causal', dict(k=None, threshold=threshold, use_cache=False)),
    'teacher, 1 token/step': ('teacher', 'bidirectional', dict(k=1, threshold=None, early_stop=False)),
    f'teacher, threshold {threshold}': ('teacher', 'bidirectional', dict(k=None, threshold=threshold)),
    'teacher, truncated': None,  # filled in below
    'autoregressive, cached': ('ar', 'causal', dict(use_cache=True)),
}
rows, outputs = {}, {}
for name in list(rules):  # accuracy: every test problem, batched
    if name == 'teacher, truncated':  # the same number of passes as the student, spread evenly over the blocks
        budget = max(1, round(rows['student, cached']['nfe_math'] / (gen_len // block_size)))
        k = math.ceil(block_size / budget)
        rules[name] = ('teacher', 'bidirectional', dict(k=k, threshold=None, early_stop=False))
        name_shown = f'teacher, truncated to {math.ceil(block_size / k)} steps/block'
    res = decode(*rules[name], test)
    outputs[name] = res['text']
    f = cdlm.summarize(res, test, gen_len, block_size)
    rows[name] = dict(acc_math=f['math']['acc'], acc_code=f['code']['acc'], answer_acc_math=f['math']['answer_acc'],
                      nfe_math=f['math']['nfe'], tokens_per_step=f['math']['tokens_per_step'])
    print(f'{name}: {rows[name]}')

# latency at batch 1: a warm-up problem per row, then `repeats` rounds; in each round every problem is decoded by
# every row in turn, so a slow spell of the machine (seconds long on a shared CPU) hits all rows alike; per row, the
# median round
for rule in rules.values():
    decode(*rule, timed[:1], batch_size=1)
seconds = {name: [] for name in rules}
for _ in tqdm(range(repeats), desc='timing', unit='round'):
    runs = {name: [] for name in rules}
    for q in timed:
        for name, rule in rules.items():
            runs[name].append(decode(*rule, [q], batch_size=1))
    for name, rs in runs.items():
        seconds[name].append(sum(r['seconds'] for r in rs) / len(timed))
last = {name: {k: [v for r in rs for v in r[k]] for k in ('strict', 'answer', 'nfe', 'text')}  # the last round
        for name, rs in runs.items()}
for name, res1 in last.items():
    f1 = cdlm.summarize(res1, timed, gen_len, block_size)['math']
    n_tok = f1['tokens_per_step'] * f1['nfe']  # generated tokens per timed problem: the answer and its EOS
    sec = statistics.median(seconds[name])
    rows[name].update(latency_s=sec, tokens_per_s=n_tok / sec,
                      batch1_matches=res1['text'] == [t for t, q in zip(outputs[name], test) if q in timed])
base = rows['teacher, 1 token/step']['latency_s']
for r in rows.values():
    r['speedup'] = base / r['latency_s']
rows['student, cached']['match'] = rows['student, uncached']['match'] = outputs['student, cached'] == outputs[
    'student, uncached']

print(f'\n| decoding | math acc | code acc | math NFE | tokens/step | latency | tokens/s | speed-up | match |')
print('|---|---|---|---|---|---|---|---|---|')
for name, r in rows.items():
    shown = name_shown if name == 'teacher, truncated' else name
    print(f'| {shown} | {r["acc_math"]:.1%} | {r["acc_code"]:.1%} | {r["nfe_math"]:.2f} | {r["tokens_per_step"]:.2f} | '
          f'{r["latency_s"] * 1000:.1f} ms | {r["tokens_per_s"]:.0f} | {r["speedup"]:.1f}x | {r.get("match", "")} |')

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

# arithmetic intensity of one forward pass at batch 1, from the shapes: FLOPs over bytes of weights and KV cache read
a = models['student'].args
n_matmul = a['n_layer'] * 12 * a['d_model'] ** 2 + a['d_model'] * (a['vocab_size'] - 1)  # weights used in matmuls
bytes_w = 2 if device.startswith('cuda') else 4  # bf16 on CUDA (autocast's weight copies, a bf16 cache), else fp32
T = prompt_len + gen_len


def intensity(q, kv):
    """q new tokens attending to kv keys: 2 FLOPs per weight per token, plus QK^T and AV; bytes = weights + KV read."""
    flops = 2 * n_matmul * q + 4 * a['n_layer'] * q * kv * a['d_model']
    bytes_ = bytes_w * (n_matmul + 2 * a['n_layer'] * kv * a['d_model'])
    return flops, bytes_


modes = {'autoregressive, cached (mid-answer)': (1, prompt_len + gen_len // 2),
         'teacher, no cache (whole canvas)': (T, T),
         'student, cached (one block)': (block_size, prompt_len + gen_len // 2),
         'student, uncached (prefix)': (prompt_len + gen_len // 2, prompt_len + gen_len // 2)}
print('\n| forward pass (batch 1) | tokens | MFLOP | MB read | FLOP/byte | roofline bound |\n|---|---|---|---|---|---|')
ai_rows = {}
for name, (q, kv) in modes.items():
    flops, bytes_ = intensity(q, kv)
    bound = max(flops / (peak_tflops * 1e12), bytes_ / (peak_gbps * 1e9)) if peak_tflops and peak_gbps else None
    ai_rows[name] = dict(tokens=q, flops=flops, bytes=bytes_, intensity=flops / bytes_, roofline_s=bound)
    print(f'| {name} | {q} | {flops / 1e6:.1f} | {bytes_ / 1e6:.2f} | {flops / bytes_:.1f} | '
          + (f'{bound * 1e6:.1f} us |' if bound else '- |'))
if peak_tflops and peak_gbps:
    print(f'ridge point: {peak_tflops * 1e12 / (peak_gbps * 1e9):.0f} FLOP/byte')

result = dict(device=device, device_name=torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor(),
              torch=torch.__version__, config=config, rows=rows, cache_scaling=scaling_rows, arithmetic_intensity=ai_rows)
out = os.path.join(here, json)
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, 'w') as fh:
    jsonlib.dump(result, fh, indent=1)
print(f'wrote {out}')
print(jsonlib.dumps({k: round(v['speedup'], 2) for k, v in rows.items()}))
