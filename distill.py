"""
The whole CDLM recipe in one command: teacher (trained first if missing) -> trajectories -> block-causal student.

    python distill.py                           # everything, on one GPU or a 2-core CPU
    python distill.py --w_cons=0                # an ablation: drop the consistency loss
    python distill.py --help                    # every setting and its default

Steps (Kim et al., arXiv 2511.19269):
  1. the bidirectional teacher decodes training prompts one token per step and its trajectories are recorded;
  2. a student, initialized from the teacher's weights, learns under the block-causal mask from three losses;
  3. teacher and student are compared on the test split.
Relative paths are taken from this file's folder. Ctrl-C saves the student before exiting.
"""
import os
import time

import torch
from tqdm import tqdm

import cdlm

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'  # checkpoints and trajectories go here
teacher_ckpt = 'teacher.pt'  # trained with train_teacher.py when missing
teacher_args = ''  # more --key=value for train_teacher.py (device, seed, lengths, bf16, threads are passed on)
student_ckpt = 'student.pt'  # the distilled student
traj_file = 'trajectories.pt'  # reused when it matches the teacher and the lengths, rebuilt otherwise
init_from = 'teacher'  # 'teacher' (fresh student) or 'resume' (continue the student checkpoint)
eval_interval = 250  # iterations between evaluations and checkpoints
eval_problems = 50  # val problems per family decoded at each eval
# data
corpus = 'full'  # 'full', or 'small' (the workshop's); the teacher's, which is trained on it when missing
prompt_len = 24  # must match the teacher
gen_len = 48  # must match the teacher; a multiple of block_size
block_size = 16  # the student's block B
# trajectories
n_traj = 4000  # training prompts the teacher decodes, split evenly over the temperatures
temperatures = '0'  # teacher sampling temperatures (paper: '0,0.5'; greedy alone distils better: EXPERIMENTS.md)
topk = 8  # teacher log-probs kept per position
traj_batch = 250  # prompts decoded at once
# losses
w_distill = 1.0  # distillation: KL(teacher at finalization || student at the earlier state)
distill_temp = 0.25  # temperature of that teacher target (paper: 1; below 1 sharpens it: EXPERIMENTS.md)
w_cons = 0.5  # consistency: KL(student at a later state || student at the earlier state)
w_dlm = 0.3  # auxiliary masked-diffusion loss on the ground truth (paper: 0.1 LLaDA, 0.01 Dream; 0.3: EXPERIMENTS.md)
dlm_rows = 'train'  # its ground truth: 'train', rows of the whole training split; 'traj', the trajectories' prompts
# optim
batch_size = 32  # trajectories per iteration
max_iters = 1500  # optimizer steps
lr = 3e-4  # peak AdamW learning rate (1e-3 first wrecks what the teacher knew: 28% after 250 steps)
min_lr = 3e-5  # floor of the cosine decay
warmup_iters = 50  # linear warm-up steps
grad_clip = 1.0  # max gradient norm (0 = off)
# evaluation
threshold = 0.9  # the student's confidence threshold tau at evaluation
test_problems = 500  # test problems per family in the final table (500 = all)
latency_problems = 20  # math test problems timed one at a time (batch 1), after one warm-up decode
# system
device = 'auto'  # 'auto', 'cpu', 'cuda', 'mps'
threads = 0  # torch CPU threads, 0 = one per core
bf16 = True  # train the student in bf16 autocast on CPUs that multiply bf16 natively (AVX512-BF16, AMX; CUDA always)
seed = 1337  # drives trajectories, batches, masking and sampling
config = cdlm.configure(globals(), doc=__doc__, rules={  # --key=value overrides, checked before any work; --help
    '>0': 'eval_interval eval_problems prompt_len gen_len block_size n_traj traj_batch batch_size max_iters lr '
          'test_problems latency_problems distill_temp',
    '>=0': 'w_distill w_cons w_dlm min_lr warmup_iters grad_clip threads seed', '0..1': 'threshold',
    f'1..{cdlm.VOCAB_SIZE - 1}': 'topk', 'floats>=0': 'temperatures', 'teacher|resume': 'init_from',
    'full|small': 'corpus', 'train|traj': 'dlm_rows', 'folder': 'out_dir',
    'name': 'teacher_ckpt student_ckpt traj_file', 'device': 'device'})
# -----------------------------------------------------------------------------

t_start = time.time()
torch.manual_seed(seed)
torch.set_num_threads(threads or os.cpu_count())
device = cdlm.pick_device(device)
here = os.path.dirname(os.path.abspath(__file__))
teacher_path, student_path, traj_path = (os.path.join(here, out_dir, name)
                                         for name in (teacher_ckpt, student_ckpt, traj_file))
print('config:', config)
gen = torch.Generator(device).manual_seed(seed)

# 0. the teacher: train it with train_teacher.py's own code path when missing, or finish it if it was interrupted
cdlm.train_or_finish(teacher_path, os.path.join(here, 'train_teacher.py'),
                     [f'--out_dir={out_dir}', f'--ckpt_name={teacher_ckpt}', f'--device={device}', f'--seed={seed}',
                      f'--corpus={corpus}', f'--prompt_len={prompt_len}', f'--gen_len={gen_len}',
                      f'--block_size={block_size}', f'--bf16={bf16}', f'--threads={threads}', '--final_report=0']
                     + teacher_args.split(), 'teacher')
teacher, teacher_meta = cdlm.load_checkpoint(teacher_path, device, hint='python distill.py', kind='teacher')
teacher.eval()
if (taught := teacher_meta['config']['corpus']) != corpus:
    cdlm.fail(f'{teacher_path} was trained on --corpus={taught}; pass --corpus={taught} or another --out_dir')
if teacher.args['seq_len'] != prompt_len + gen_len:
    cdlm.fail(f'{teacher_path} was trained for prompt_len + gen_len = {teacher.args["seq_len"]}, this config asks '
              f'for {prompt_len} + {gen_len}; pass the teacher\'s --prompt_len/--gen_len or retrain it')
if init_from == 'resume':  # the student to continue, checked now so that a bad file costs no trajectory work
    student, student_meta = cdlm.load_checkpoint(student_path, device, hint='python distill.py', kind='student')
    if (student_meta['config']['prompt_len'], student_meta['block_size']) != (prompt_len, block_size):
        cdlm.fail(f'{student_path} was distilled with prompt_len={student_meta["config"]["prompt_len"]}, '
                  f'block_size={student_meta["block_size"]}; this config asks for {prompt_len}, {block_size}')
teacher_id = cdlm.fingerprint(teacher)
print(f'teacher: {teacher_path} (iter {teacher_meta["iter_num"]}, fingerprint {teacher_id})')

# 1. trajectories: the teacher decodes training prompts one token per step, at each temperature
temps = [float(t) for t in temperatures.split(',')]
want = dict(teacher=teacher_id, corpus=corpus, prompt_len=prompt_len, gen_len=gen_len, block_size=block_size,
            temperatures=temps, topk=topk, count=n_traj)
traj, why = cdlm.load_torch(traj_path)  # reused only when this teacher made it with these settings
if traj is not None:
    stored = traj.get('meta', {}) if isinstance(traj, dict) else {}
    if diff := {k: (stored.get(k), v) for k, v in want.items() if stored.get(k) != v}:
        why = f'does not match this run (stored, wanted: {diff})'
    elif not all(torch.is_tensor(traj.get(k)) and len(traj[k]) == n_traj for k in ('x', 'step_of', 'top_idx',
                                                                                      'top_logp', 'gt')):
        why = 'incomplete'
if why not in ('', 'missing'):
    print(f'{traj_path}: {why}; rebuilding it')
    traj = None
x_train = cdlm.load_split('train', prompt_len, gen_len, corpus)[0].to(device)
if traj is None:
    x_gt = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n_traj]]
    parts = []
    with tqdm(total=n_traj, desc='trajectories', unit='prompt') as bar:
        for i in range(0, n_traj, traj_batch):
            gt = x_gt[i:i + traj_batch]
            temp = temps[i * len(temps) // n_traj]
            with cdlm.autocast(device):
                out = cdlm.generate(teacher, gt[:, :prompt_len], gen_len, block_size, k=1, threshold=None,
                                    temperature=temp, early_stop=False, generator=gen, record_topk=topk)
            parts.append(dict(x=out['x'], step_of=out['step_of'].short(), top_idx=out['top_idx'].short(),
                              top_logp=out['top_logp'].half(), gt=gt))
            bar.update(len(gt))
    traj = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    traj['meta'] = want
    cdlm.save_atomic(traj, traj_path)
    print(f'saved {n_traj} trajectories to {traj_path} ({os.path.getsize(traj_path) / 1e6:.1f} MB)')
else:
    traj = {k: v.to(device) if torch.is_tensor(v) else v for k, v in traj.items()}
    print(f'reusing {traj_path} ({len(traj["x"])} trajectories)')

# 2. the student: the teacher's weights under the block-causal mask
iter_num = 0
if init_from == 'resume':
    iter_num = student_meta['iter_num']
    gen.manual_seed(seed + iter_num)  # new batches and states after a resume, not a replay of the first ones
    print(f'resuming the student from {student_path} at iter {iter_num}')
else:
    student, _ = cdlm.load_checkpoint(teacher_path, device)
optimizer = cdlm.make_optimizer(student, 'adamw', lr)
if init_from == 'resume' and student_meta['optimizer']:
    optimizer.load_state_dict(student_meta['optimizer'])
_, val_problems = cdlm.load_split('val', prompt_len, gen_len, corpus)
eval_set = cdlm.tasks.per_family(val_problems, eval_problems)


def evaluate():
    """The student's strict accuracy and mean NFE at tau with the exact cache, on a val subset."""
    student.eval()
    res = cdlm.evaluate(student, eval_set, prompt_len, gen_len, block_size, 'block_causal', device,
                        use_cache=True, k=None, threshold=threshold)
    student.train()
    print(f'  sample: {eval_set[0][0]} -> {res["text"][0]}')
    f = cdlm.summarize(res, eval_set, gen_len, block_size)
    return dict(acc_math=f['math']['acc'], acc_code=f['code']['acc'], nfe_math=f['math']['nfe'])


def save(iter_num, metrics):
    cdlm.save_checkpoint(student_path, student, 'student', config, iter_num, metrics, optimizer)
    print(f'saved {student_path}')


def step(iter_num):
    """One optimizer step on a batch of trajectories; returns the losses to log."""
    idx = torch.randint(len(traj['x']), (batch_size,), generator=gen, device=device)
    batch = {k: v[idx] for k, v in traj.items() if k != 'meta'}
    if dlm_rows == 'train':  # the DLM term on any training problem, not only the few the teacher decoded
        batch['gt'] = x_train[torch.randint(len(x_train), (batch_size,), generator=gen, device=device)]
    with cdlm.autocast(device, cpu_bf16=bf16):
        losses = cdlm.cdlm_losses(student, batch, prompt_len, block_size, w_cons, w_dlm, gen, distill_temp)
    loss = w_distill * losses['loss_distill'] + w_cons * losses['loss_cons'] + w_dlm * losses['loss_dlm']
    cdlm.optimizer_step(student, optimizer, loss, cdlm.cosine_lr(iter_num, lr, min_lr, warmup_iters, max_iters),
                        grad_clip)
    return dict(loss=loss, distill=losses['loss_distill'], cons=losses['loss_cons'], dlm=losses['loss_dlm'])


student.train()
cdlm.train_loop(step, iter_num, max_iters, eval_interval, evaluate, save, device, log_interval=20)

# 3. teacher vs student on the test split
student.eval()
test = cdlm.tasks.build_splits(corpus=corpus)['test']
test = cdlm.tasks.per_family(test, test_problems)
rows = [('teacher, 1 token/step', teacher, 'bidirectional', dict(k=1, threshold=None, early_stop=False)),
        (f'teacher, threshold {threshold}', teacher, 'bidirectional', dict(k=None, threshold=threshold)),
        (f'student, threshold {threshold}, uncached', student, 'block_causal', dict(k=None, threshold=threshold)),
        (f'student, threshold {threshold}, cached', student, 'block_causal',
         dict(k=None, threshold=threshold, use_cache=True))]
math_test = cdlm.tasks.of_family(test, 'math')
timed = math_test[::max(1, len(math_test) // latency_problems)][:latency_problems]  # math, like the NFE column
print(f'\n| {"decoding":34s} | math acc | code acc | math NFE | code NFE | math tokens/step | math latency |')
print(f'|{"-" * 36}|----------|----------|----------|----------|------------------|--------------|')
texts = []
for name, model, attn, rule in rows:
    res = cdlm.evaluate(model, test, prompt_len, gen_len, block_size, attn, device, **rule)
    texts.append(res['text'])
    f = cdlm.summarize(res, test, gen_len, block_size)
    cdlm.evaluate(model, timed[:1], prompt_len, gen_len, block_size, attn, device, **rule)  # warm-up, untimed
    latency = cdlm.evaluate(model, timed, prompt_len, gen_len, block_size, attn, device, batch_size=1,
                            **rule)['seconds'] / len(timed)  # batch 1: what one request costs
    print(f'| {name:34s} | {f["math"]["acc"]:8.1%} | {f["code"]["acc"]:8.1%} | {f["math"]["nfe"]:8.2f} | '
          f'{f["code"]["nfe"]:8.2f} | {f["math"]["tokens_per_step"]:16.2f} | {latency * 1000:9.1f} ms |')
same = texts[-1] == texts[-2]
print(f'cached and uncached students decode the same tokens: {same} '
      + ('(the cache is exact)' if same else '(bf16 rounding broke a near-tie: README, "Going bigger")'))
print(f'done in {(time.time() - t_start) / 60:.1f} min')
