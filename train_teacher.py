"""
Train the bidirectional masked-diffusion teacher on the toy corpus (LLaDA-style SFT: the prompt is never masked).

    python train_teacher.py                       # the default, minutes on a 2-core CPU
    python train_teacher.py --max_iters=200       # a quick look
    python train_teacher.py --init_from=resume    # continue from out/teacher.pt
    python train_teacher.py --help                # every setting and its default

Relative paths are taken from this file's folder. Ctrl-C saves a checkpoint before exiting.
"""
import os

import torch
import torch.nn.functional as F

import cdlm

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'  # checkpoints go here
ckpt_name = 'teacher.pt'  # file name inside out_dir
init_from = 'scratch'  # 'scratch' or 'resume'
objective = 'mdm'  # 'mdm': the masked-diffusion teacher; 'ar': a same-size autoregressive baseline (for bench.py)
eval_interval = 0  # iterations between evaluations and checkpoints (0 = at each quarter of max_iters)
eval_problems = 100  # val problems per family decoded at each eval (one token per step; 200 = all)
final_report = 500  # at the end, decode this many test problems per family with three rules (0 = skip)
# data
prompt_len = 24  # every prompt is left-padded to this many tokens
gen_len = 48  # response length L, EOS-padded; a multiple of block_size
block_size = 16  # decoding block B (the student's block; the teacher decodes semi-autoregressively with it)
corpus = 'full'  # 'full', or 'small': the workshop's (two-digit sums, code values 0..9; data/tasks.py)
code_weight = 2.0  # a code row is drawn this many times as often as a math row (EXPERIMENTS.md)
# loss
loss_weight = 'mean'  # 'mean': plain mean cross-entropy over masked tokens; 'elbo': 1/t-weighted (LLaDA)
complement = True  # each example twice in a batch, the second copy hiding exactly what the first shows: EXPERIMENTS.md
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads
d_model = 128  # width
# optim
batch_size = 32  # sequences per iteration (small batches learn more per example here)
max_iters = 5500  # optimizer steps: the schedule is by steps, never by wall-clock (AdamW needed 11000)
lr = 1e-3  # peak learning rate (Muon's steps are scaled to AdamW's size, so one lr serves both)
min_lr = 1e-4  # floor of the cosine decay
warmup_iters = 100  # linear warm-up steps
weight_decay = 0.0  # decoupled weight decay
optimizer = 'muon'  # 'muon': Muon on the blocks' matrices, AdamW on the rest (cdlm.make_optimizer); 'adamw'
grad_clip = 1.0  # max gradient norm (0 = off)
# system
device = 'auto'  # 'auto', 'cpu', 'cuda', 'mps'
threads = 0  # torch CPU threads, 0 = one per core
compile = False  # torch.compile the model
bf16 = True  # train in bf16 autocast on CPUs that multiply bf16 natively (AVX512-BF16, AMX; CUDA always)
seed = 1337  # drives init, batches and masking
config = cdlm.configure(globals(), doc=__doc__, rules={  # --key=value overrides, checked before any work; --help
    '>0': 'eval_problems prompt_len gen_len block_size code_weight n_layer n_head d_model batch_size max_iters lr',
    '>=0': 'eval_interval final_report min_lr warmup_iters weight_decay grad_clip threads seed',
    'scratch|resume': 'init_from', 'full|small': 'corpus', 'mdm|ar': 'objective', 'mean|elbo': 'loss_weight',
    'muon|adamw': 'optimizer', 'folder': 'out_dir', 'name': 'ckpt_name', 'device': 'device'})
# -----------------------------------------------------------------------------

torch.manual_seed(seed)
torch.set_num_threads(threads or os.cpu_count())
device = cdlm.pick_device(device)
out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), out_dir, ckpt_name)
print('config:', config)

# data: every split tokenized up front, (N, prompt_len + gen_len)
x_train, train_problems = cdlm.load_split('train', prompt_len, gen_len, corpus)
x_val, val_problems = cdlm.load_split('val', prompt_len, gen_len, corpus)
x_train, x_val = x_train.to(device), x_val.to(device)
row_weight = torch.tensor([code_weight if fam == 'code' else 1.0 for _, _, fam in train_problems], device=device)
eval_set = cdlm.tasks.per_family(val_problems, eval_problems)
print(f'train {len(x_train)} examples, val {len(x_val)}, tokens per example {x_train.shape[1]}')

# model and optimizer, fresh or resumed
kind, attn = ('teacher', 'bidirectional') if objective == 'mdm' else ('ar', 'causal')
model_args = dict(vocab_size=cdlm.VOCAB_SIZE, seq_len=prompt_len + gen_len, n_layer=n_layer, n_head=n_head,
                  d_model=d_model)
iter_num = 0
if init_from == 'resume':
    model, ckpt = cdlm.load_checkpoint(out_path, device, kind=kind)
    if ckpt['model_args'] != model_args:
        cdlm.fail(f'{out_path} has model {ckpt["model_args"]}, the config asks for {model_args}')
    if ckpt['config']['corpus'] != corpus:
        cdlm.fail(f'{out_path} was trained on --corpus={ckpt["config"]["corpus"]}, not {corpus}')
    if (trained_with := ckpt['config'].get('optimizer', 'adamw')) != optimizer:  # AdamW before --optimizer existed
        cdlm.fail(f'{out_path} was trained with --optimizer={trained_with}, not {optimizer}')
    iter_num = ckpt['iter_num']
    print(f'resuming from {out_path} at iter {iter_num}')
else:
    model = cdlm.Transformer(**model_args).to(device)
print(f'model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters')
opt = cdlm.make_optimizer(model, optimizer, lr, weight_decay)
if init_from == 'resume' and ckpt['optimizer']:
    opt.load_state_dict(ckpt['optimizer'])
train_model = torch.compile(model) if compile else model
gen = torch.Generator(device).manual_seed(seed + iter_num)  # batches and masks; offset so a resume draws new ones
response = torch.arange(x_train.shape[1], device=device) >= prompt_len  # maskable positions: the response only
causal = cdlm.attention_mask('causal', x_train.shape[1] - 1, device=device)
paired = complement and objective == 'mdm'  # complementary masks pair the rows of a training batch
eval_interval = eval_interval or max(1, max_iters // 4)


def loss_on(x0, t, paired=False):
    """The training loss of a batch; paired: the second half of the rows repeats the first (complementary masks)."""
    if objective == 'ar':  # next-token cross-entropy on the response under the causal mask
        with cdlm.autocast(device, cpu_bf16=bf16):
            logits = train_model(x0[:, :-1], causal)  # (B, T-1, V-1): position i predicts token i+1
        return F.cross_entropy(logits[:, prompt_len - 1:].flatten(0, 1).float(), x0[:, prompt_len:].flatten())
    xt, hidden = cdlm.mask_tokens(x0, response, t, gen, paired)
    with cdlm.autocast(device, cpu_bf16=bf16):
        logits = train_model(xt)  # (B, T, V-1), full bidirectional attention
    return cdlm.mdm_loss(logits, x0, hidden, t, gen_len, loss_weight)


@torch.no_grad()
def evaluate():
    """Val loss on a fixed grid of t (shuffled once, so that both families span it; the masks come from the run's
    generator), and strict accuracy of one-token-per-step decoding on a val subset."""
    model.eval()
    t = torch.linspace(0.05, 1.0, len(x_val))[torch.randperm(len(x_val), generator=torch.Generator().manual_seed(0))]
    t = t.to(device)
    val_loss = sum(loss_on(x_val[i:i + 200], t[i:i + 200]).item() * len(t[i:i + 200])
                   for i in range(0, len(x_val), 200)) / len(x_val)
    rule = dict(k=1, threshold=None, early_stop=False) if objective == 'mdm' else {}
    res = cdlm.evaluate(model, eval_set, prompt_len, gen_len, block_size, attn, device, **rule)
    model.train()
    print(f'  sample: {eval_set[0][0]} -> {res["text"][0]}')
    f = cdlm.summarize(res, eval_set, gen_len, block_size)
    return dict(val_loss=val_loss, **{f'acc_{fam}': f[fam]['acc'] for fam in cdlm.tasks.FAMILIES})


def save(iter_num, metrics):
    cdlm.save_checkpoint(out_path, model, kind, config, iter_num, metrics, opt)
    print(f'saved {out_path}')


def step(iter_num):
    """One optimizer step on a fresh batch; returns what to log."""
    x0 = x_train[torch.multinomial(row_weight, batch_size, replacement=True, generator=gen)]
    t = cdlm.antithetic_t(batch_size, generator=gen, device=device)
    if paired:  # the second half repeats the first and hides its complement (rate 1 - t)
        half = batch_size // 2
        x0[half:2 * half], t[half:2 * half] = x0[:half], (1 - t[:half]).clamp_min(1e-3)
    loss = loss_on(x0, t, paired)
    lr_now = cdlm.cosine_lr(iter_num, lr, min_lr, warmup_iters, max_iters)
    cdlm.optimizer_step(model, opt, loss, lr_now, grad_clip)
    return dict(loss=loss, lr=lr_now)


# training loop: logs, evaluations and checkpoints around step(); Ctrl-C saves a checkpoint
cdlm.train_loop(step, iter_num, max_iters, eval_interval, evaluate, save, device)

# how hard is parallel decoding for this teacher? the whole test split, three decoding rules
if final_report and objective == 'mdm':
    model.eval()
    test = cdlm.tasks.per_family(cdlm.tasks.build_splits(corpus=corpus)['test'], final_report)
    print('test split:           family  strict  answer-only  NFE    NFE/block  tokens/step')
    for name, rule in [('1 token/step', dict(k=1, threshold=None, early_stop=False)),
                       ('4 tokens/step', dict(k=4, threshold=None, early_stop=False)),
                       ('threshold 0.9', dict(k=None, threshold=0.9))]:
        res = cdlm.evaluate(model, test, prompt_len, gen_len, block_size, 'bidirectional', device, **rule)
        for fam, f in cdlm.summarize(res, test, gen_len, block_size).items():
            print(f'teacher {name:13s} {fam:6s} {f["acc"]:6.1%}  {f["answer_acc"]:11.1%}  {f["nfe"]:5.2f}  '
                  f'{f["nfe_per_block"]:9.2f}  {f["tokens_per_step"]:11.2f}')
