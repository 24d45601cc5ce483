"""
Decode with a teacher or student checkpoint and watch the masks fill in.

    python sample.py                                  # a few test problems with out/student.pt (else out/teacher.pt)
    python sample.py --prompt="347+285=" --show       # animate the denoising of your own prompt
    python sample.py --ckpt=out/teacher.pt --k=1      # the CDLM teacher rule: one token per step
    python sample.py --help                           # every setting and its default

Each problem runs alone (batch 1), so the latency printed is what one request costs.
"""
import os
import sys
import time

import torch

import cdlm

# -----------------------------------------------------------------------------
ckpt = ''  # checkpoint path; '' = out/student.pt if it exists, else out/teacher.pt
prompt = ''  # your own prompt; '' = test problems
num_problems = 3  # test problems per family when no --prompt is given
threshold = 0.9  # finalize every masked position whose confidence exceeds this (Fast-dLLM / CDLM rule)
k = 0  # > 0: finalize exactly k tokens per step instead (k=1 is the teacher's trajectory rule)
cache = True  # exact KV cache of the prompt and finished blocks (students only; a teacher recomputes everything)
block_size = 0  # 0 = the checkpoint's block size; a teacher may decode with any divisor of gen_len
temperature = 0.0  # 0 = greedy
show = False  # animate each step: masks as a placeholder, new tokens highlighted, the current block marked
delay = 0.2  # seconds per frame with --show on a terminal
compile = False  # torch.compile the model for decoding (cdlm.compile_decoder): the first problems pay for compiling
device = 'cpu'  # 'auto', 'cpu', 'cuda', 'mps'
seed = 1337  # drives sampling at temperature > 0 and which test problems are shown
config = cdlm.configure(globals(), doc=__doc__, rules={  # --key=value overrides, checked before any work; --help
    '>0': 'num_problems', '>=0': 'k block_size temperature delay seed', '0..1': 'threshold', 'device': 'device'})
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
device = cdlm.pick_device(device)
here = os.path.dirname(os.path.abspath(__file__))
if not ckpt:
    ckpt = os.path.join(here, 'out', 'student.pt')
    ckpt = ckpt if os.path.exists(ckpt) else os.path.join(here, 'out', 'teacher.pt')
model, meta = cdlm.load_checkpoint(os.path.join(here, ckpt), device, hint='python distill.py',
                                   kind=('teacher', 'student'))
model.eval()
model = cdlm.compile_decoder(model, device) if compile else model
kind, cfg = meta['kind'], meta['config']
prompt_len, gen_len = cfg['prompt_len'], cfg['gen_len']
attn = 'bidirectional' if kind == 'teacher' else 'block_causal'
block_size = block_size or meta['block_size']
if kind == 'student' and block_size != meta['block_size']:
    cdlm.fail(f'this student was distilled with block_size={meta["block_size"]}; its mask needs the same')
if gen_len % block_size:
    cdlm.fail(f'block_size={block_size} does not divide gen_len={gen_len}')
use_cache = cache and kind == 'student'
rule = dict(k=k, threshold=None) if k > 0 else dict(k=None, threshold=threshold)
print(f'{kind} from {ckpt} (iter {meta["iter_num"]}), block_size {block_size}, cache {use_cache}, '
      + (f'{k} tokens per step' if k > 0 else f'threshold {threshold}'))

enc = cdlm.get_tokenizer()
if prompt:
    problems = [(cdlm.tasks.normalize(prompt), None, None)]
else:
    test = cdlm.tasks.build_splits()['test']
    rng = torch.Generator().manual_seed(seed)
    problems = [test[i] for fam in cdlm.tasks.FAMILIES for i in
                [j for j in torch.randperm(len(test), generator=rng).tolist() if test[j][2] == fam][:num_problems]]
tty = sys.stdout.isatty()
MASK, EOS = '░', '·'


def render(x, pick, block):
    """One frame of the response: masks as a placeholder, EOS as a dot; `pick` marks the newly finalized tokens."""
    cells = []
    for i, tok in enumerate(x.tolist()):
        ch = MASK if tok == cdlm.MASK_ID else EOS if tok == cdlm.EOS_ID else enc.decode([tok])
        if tty and pick[i]:
            ch = f'\x1b[1;32m{ch}\x1b[0m'  # new this step: bold green
        elif tty and block[0] <= i < block[1]:
            ch = f'\x1b[4m{ch}\x1b[0m'  # current block: underlined
        cells.append(ch)
    return ''.join(cells)


def animate(x, start, pick, logits):
    """on_step callback: redraw in place on a terminal; else two plain lines per step, ^ under the new tokens and
    - under the rest of the current block."""
    s = start - prompt_len
    new = torch.zeros(gen_len, dtype=torch.bool)
    new[s:s + block_size] = pick[0].cpu()
    animate.step += 1
    line = render(x[0, prompt_len:], new, (s, s + block_size))
    if tty:
        print(f'\r\x1b[2Kstep {animate.step:2d}  {line}', end='', flush=True)
        time.sleep(delay)
    else:
        marks = ''.join('^' if new[i] else '-' if s <= i < s + block_size else ' ' for i in range(gen_len))
        print(f'step {animate.step:2d}  {line}\n         {marks}')


for p, _, family in problems:
    x = torch.tensor([cdlm.encode_prompt(enc, p, prompt_len)], device=device)
    animate.step = 0
    if show:
        print(f'prompt: {p}')
    gen = torch.Generator(device).manual_seed(seed)
    cdlm.synchronize(device)
    t0 = time.perf_counter()
    with cdlm.autocast(device):
        out = cdlm.generate(model, x, gen_len, block_size, attn=attn, use_cache=use_cache, temperature=temperature,
                            generator=gen, on_step=animate if show else None, **rule)
    cdlm.synchronize(device)
    dt = time.perf_counter() - t0
    if show and tty:
        print()
    text = cdlm.decode_response(enc, out['x'][0, prompt_len:])
    nfe = out['nfe'][0].item()
    n_tokens = cdlm.generated_tokens(enc, text, gen_len)
    try:
        strict, answer = cdlm.tasks.check(p, text)
        verdict = 'correct' if strict else 'answer right, reasoning invalid' if answer else 'wrong'
    except ValueError:
        verdict = 'no checker for this prompt'
    print(f'{p} -> {text}\n  {verdict}; nfe {nfe}, {n_tokens / nfe:.2f} tokens/step, '
          f'{dt * 1000:.0f} ms{" (includes animation)" if show and tty else ""}')
