"""
Decode with a teacher or student checkpoint and watch the masks fill in.

    python sample.py                                  # a few test problems with out/student.pt (else out/teacher.pt)
    python sample.py --prompt="347+285=" --show       # animate the denoising of your own prompt
    python sample.py --ckpt=out/teacher.pt --k=1      # the CDLM teacher rule: one token per step
    python sample.py --prompt="347+285=" --fill="___________________________ #### 632"    # infilling (teacher)
    python sample.py --prompt="347+285=" --correct="<5+7+0=12<4+8+1=14<2+3+1=06 #### 632"  # correction (teacher)
    python sample.py --help                           # every setting and its default

Each problem runs alone (batch 1), so the latency printed is what one request costs.
"""
import os
import sys
import time

import torch

import cdlm

# -----------------------------------------------------------------------------
ckpt = ''  # checkpoint path; '' = out/student.pt if it exists, else out/teacher.pt (the teacher for --fill, --correct)
prompt = ''  # your own prompt; '' = test problems
fill = ''  # infilling: the response with _ at every character to decode; the rest is given and kept (needs --prompt)
correct = ''  # correction: a response to the prompt; what the teacher finds unlikely is decoded again (needs --prompt)
fix_below = 0.1  # --correct re-masks every character whose probability, given all the others, is under this
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
    '>0': 'num_problems', '>=0': 'k block_size temperature delay seed', '0..1': 'threshold fix_below',
    'device': 'device'})
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
device = cdlm.pick_device(device)
here = os.path.dirname(os.path.abspath(__file__))
bidirectional = fill or correct  # infilling and correction read both sides: the teacher's work
if bidirectional and not prompt:
    cdlm.fail('--fill and --correct need the --prompt the response answers')
if fill and correct:
    cdlm.fail('give --fill or --correct, not both')
if not ckpt:
    ckpt = os.path.join(here, 'out', 'student.pt')
    ckpt = ckpt if os.path.exists(ckpt) and not bidirectional else os.path.join(here, 'out', 'teacher.pt')
model, meta = cdlm.load_checkpoint(os.path.join(here, ckpt), device, hint='python distill.py',
                                   kind=('teacher', 'student'))
model.eval()
if bidirectional and meta['kind'] != 'teacher':
    cdlm.fail(f'{ckpt} is a {meta["kind"]}; --fill and --correct need the bidirectional teacher '
              '(--ckpt=out/teacher.pt): a block-causal model cannot see the blocks after the one it decodes')
model = cdlm.compile_decoder(model, device) if compile else model
kind, cfg = meta['kind'], meta['config']
prompt_len, gen_len, corpus = cfg['prompt_len'], cfg['gen_len'], cfg['corpus']
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
outside = ''  # why a --prompt lies outside the corpus ('' when it does not)
if prompt:
    problems = [(cdlm.tasks.normalize(prompt), None, None)]
    if outside := cdlm.tasks.covers(problems[0][0], corpus):
        print(f'note: this prompt lies outside the {corpus} corpus this model learned ({outside}; data/tasks.py). '
              'Decoding it anyway.')
else:
    test = cdlm.tasks.build_splits(corpus=corpus)['test']
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


def response_canvas(text, what):
    """A response typed on the command line as (1, gen_len) tokens, one per character and EOS after the last; with
    --fill, _ is a position to decode. Stops with one line when it cannot be a response to the prompt."""
    ids = []
    for ch in text:
        tok = [cdlm.MASK_ID] if ch == '_' and what == 'fill' else enc.encode_ordinary(ch)
        if len(tok) != 1:
            cdlm.fail(f'--{what}: {ch!r} is {len(tok)} tokens, not one; use ASCII characters'
                      + (', and _ for each position to decode' if what == 'fill' else ''))
        ids += tok
    if len(ids) > gen_len:
        cdlm.fail(f'--{what} has {len(ids)} characters; this model writes responses of at most {gen_len}')
    if not outside and len(ids) != (n := len(cdlm.tasks.phrasings(problems[0][0])[0])):
        cdlm.fail(f'--{what} has {len(ids)} characters; every response to {problems[0][0].strip()!r} has {n}')
    return torch.tensor([ids + [cdlm.EOS_ID] * (gen_len - len(ids))], device=device)


for p, _, family in problems:
    x = torch.tensor([cdlm.encode_prompt(enc, p, prompt_len)], device=device)
    canvas = response_canvas(fill or correct, 'fill' if fill else 'correct') if bidirectional else None
    animate.step = 0
    if show:
        print(f'prompt: {p}')
    gen = torch.Generator(device).manual_seed(seed)
    decode_kw = dict(temperature=temperature, generator=gen, on_step=animate if show else None, **rule)
    cdlm.synchronize(device)
    t0 = time.perf_counter()
    with cdlm.autocast(device):
        if correct:  # one pass scores every position, then the unlikely ones are decoded again
            out = cdlm.correct(model, torch.cat([x, canvas], 1), prompt_len, block_size, fix_below, **decode_kw)
        else:
            out = cdlm.generate(model, x, gen_len, block_size, attn=attn, use_cache=use_cache, canvas=canvas,
                                **decode_kw)
    cdlm.synchronize(device)
    dt = time.perf_counter() - t0
    if show and tty:
        print()
    text = cdlm.decode_response(enc, out['x'][0, prompt_len:])
    nfe = out['nfe'][0].item()  # with --correct, the scoring pass included
    if bidirectional:  # only the masked or re-masked positions were decoded
        n_tokens = ((canvas == cdlm.MASK_ID) if fill else out['remasked']).sum().item()
    else:
        n_tokens = cdlm.generated_tokens(enc, text, gen_len)
    try:
        strict, answer = cdlm.tasks.check(p, text)
        verdict = 'correct' if strict else 'answer right, reasoning invalid' if answer else 'wrong'
    except ValueError:
        verdict = 'no checker for this prompt'
    if fill:
        print(f'template  {fill}')
    if correct:
        marks = ''.join('^' if m else ' ' for m in out['remasked'][0, :len(correct)].tolist())
        changed = [f'{i}: {a!r} -> {b!r}' for i, (a, b) in enumerate(zip(correct, text.ljust(len(correct))))
                   if a != b]
        print(f'given     {correct}\nre-masked {marks.rstrip()}   (probability under {fix_below} given the rest)\n'
              f'changed   {", ".join(changed) or "nothing"}')
    print(f'{p} -> {text}\n  {verdict}; nfe {nfe}, {n_tokens / max(nfe, 1):.2f} tokens/step, '
          f'{dt * 1000:.0f} ms{" (includes animation)" if show and tty else ""}')
