"""Every bad setting and every damaged file ends in one `error:` line, before any work starts, and leaves the files
that were there untouched. BAD holds at least one bad value for every numeric key of every script, plus the cases
users met; a key without a case fails test_every_numeric_key_has_a_case. The scripts run in-process (runpy): a
SystemExit whose code is a string is what Python prints as one line to stderr, with exit status 1."""
import hashlib
import os
import runpy
import sys

import pytest
import torch

import cdlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = {  # script: [(arguments, what the error line must say)]; {out} is the folder of files the fixture writes
    'train_teacher.py': [
        ('--block_size=0', 'must be > 0'), ('--batch_size=0', 'must be > 0'), ('--gen_len=0', 'must be > 0'),
        ('--d_model=130', 'heads of even width'), ('--max_iters=-5', 'must be > 0'), ('--lr=-1', 'must be > 0'),
        ('--eval_interval=-1', '>= 0'), ('--eval_problems=0', '> 0'), ('--final_report=-1', '>= 0'),
        ('--prompt_len=0', '> 0'), ('--prompt_len=8', 'longer than the model'), ('--gen_len=32', 'does not fit'),
        ('--gen_len=40', 'not a multiple of block_size'), ('--code_weight=0', '> 0'), ('--n_layer=0', '> 0'),
        ('--n_head=0', '> 0'), ('--min_lr=-1', '>= 0'), ('--min_lr=0.1', 'above lr'), ('--warmup_iters=-1', '>= 0'),
        ('--weight_decay=-1', '>= 0'), ('--grad_clip=-1', '>= 0'), ('--threads=-1', '>= 0'), ('--seed=-1', '>= 0'),
        ('--init_from=fresh', "use 'scratch' or 'resume'"), ('--corpus=tiny', "use 'full' or 'small'"),
        ('--objective=gpt', "use 'mdm' or 'ar'"), ('--loss_weight=sum', "'mean' or 'elbo'"),
        ('--device=gpu', "use 'auto'"),
        ('--max_iters=ten', 'expected a int'), ('--lr=None', 'expected a finite number'), ('--lr=inf', 'finite'),
        ('--out_dir={out}/afile', 'is a file, not a folder'), ('--ckpt_name=', 'expected a file name'),
        ('--out_dir={out}/cut --init_from=resume', 'unreadable'), ('--out_dir={out}/ok --init_from=resume --d_model=64',
                                                                   'the config asks for'),
        ('--out_dir={out}/ok --init_from=resume --corpus=small --n_layer=1 --n_head=2 --d_model=16',
         'trained on --corpus=full'),
    ],
    'distill.py': [
        ('--eval_interval=0', '> 0'), ('--eval_problems=0', '> 0'), ('--prompt_len=0', '> 0'), ('--gen_len=0', '> 0'),
        ('--block_size=0', '> 0'), ('--gen_len=50', 'not a multiple'), ('--n_traj=0', '> 0'), ('--topk=0', 'in 1..257'),
        ('--topk=300', 'in 1..257'), ('--traj_batch=0', '> 0'), ('--w_distill=-1', '>= 0'), ('--w_cons=-0.5', '>= 0'),
        ('--w_dlm=-1', '>= 0'), ('--distill_temp=0', '> 0'),
        ('--w_distill=0 --w_cons=0 --w_dlm=0', 'every loss weight is 0'),
        ('--batch_size=0', '> 0'), ('--max_iters=0', '> 0'), ('--lr=0', '> 0'), ('--min_lr=-1', '>= 0'),
        ('--warmup_iters=-1', '>= 0'), ('--grad_clip=-1', '>= 0'), ('--threshold=1.5', 'in 0..1'),
        ('--threshold=-0.1', 'in 0..1'), ('--test_problems=0', '> 0'), ('--latency_problems=0', '> 0'),
        ('--threads=-1', '>= 0'), ('--seed=-1', '>= 0'), ('--temperatures=abc', 'comma-separated numbers'),
        ('--temperatures=0,-1', 'comma-separated numbers'), ('--init_from=scratch', "use 'teacher' or 'resume'"),
        ('--device=tpu', "use 'auto'"), ('--corpus=tiny', "use 'full' or 'small'"),
        ('--out_dir={out}/ok --corpus=small', 'trained on --corpus=full'), ('--out_dir={out}/afile', 'not a folder'),
        ('--traj_file=', 'a file name'), ('--student_ckpt=sub/', 'a file name'),
        ('--out_dir={out}/cut', 'unreadable'), ('--out_dir={out}/text', 'unreadable'),
        ('--out_dir={out}/notckpt', 'not a cdlm checkpoint'), ('--out_dir={out}/kind', "kind 'student', not 'teacher'"),
        ('--out_dir={out}/ok --init_from=resume --student_ckpt=teacher.pt', "kind 'teacher', not 'student'"),
    ],
    'sample.py': [
        ('--num_problems=0', '> 0'), ('--threshold=2', 'in 0..1'), ('--k=-1', '>= 0'), ('--block_size=-16', '>= 0'),
        ('--temperature=-1', '>= 0'), ('--delay=-1', '>= 0'), ('--seed=-1', '>= 0'), ('--device=gpu', "use 'auto'"),
        ('--fix_below=1.5', 'in 0..1'), ('--ckpt={out}/cut/teacher.pt', 'unreadable'), ('--ckpt={out}/text/teacher.pt', 'unreadable'),
        ('--ckpt={out}/tokenizer/teacher.pt', 'made with tokenizer'), ('--ckpt={out}/ok/ar.pt', "kind 'ar'"),
        ('--ckpt={out}/shape/teacher.pt', 'do not fit its model_args'),
        ('--ckpt={out}/notckpt/teacher.pt', 'not a cdlm checkpoint'), ('--ckpt={out}/ok', 'is a folder'),
        ('--ckpt={out}/missing.pt', 'no checkpoint at'), ('--ckpt={out}/ok/student.pt --block_size=8', 'block_size=16'),
    ],
    'bench.py': [
        ('--timed_problems=0', '> 0'), ('--repeats=0', '> 0'), ('--batches=1,0', 'integers > 0'),
        ('--batches=a', '> 0'), ('--ar_ckpt=', 'expected a file name'),
        ('--threshold=1.1', 'in 0..1'), ('--fix_below=-0.1', 'in 0..1'), ('--threads=-1', '>= 0'), ('--seed=-1', '>= 0'), ('--quick --repeats=0', '> 0'),
        ('--quick --scaling=a', 'comma-separated integers'), ('--scaling=1,0', 'comma-separated integers'),
        ('--device=gpu', "use 'auto'"), ('--json={out}/afile/b.json', 'not a folder'), ('--json={out}', 'not a file'),
        ('--out_dir={out}/cut', 'unreadable'), ('--out_dir={out}/kind', "kind 'student', not 'teacher'"),
    ],
}


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    """A folder of good and damaged files: ok/ holds a tiny teacher, student and AR model; the other folders hold a
    teacher.pt that is cut short, a text file, from another tokenizer, of the wrong shape, or not a checkpoint."""
    out = tmp_path_factory.mktemp('files')
    torch.manual_seed(0)
    model = cdlm.Transformer(seq_len=72, n_layer=1, n_head=2, d_model=16)
    config = dict(block_size=16, prompt_len=24, gen_len=48, max_iters=1)
    for kind in ('teacher', 'student', 'ar'):
        cdlm.save_checkpoint(str(out / 'ok' / f'{kind}.pt'), model, kind, config, 1, {})
    good = (out / 'ok' / 'teacher.pt').read_bytes()
    for name in ('cut', 'text', 'tokenizer', 'shape', 'notckpt', 'kind'):
        (out / name).mkdir()
    (out / 'cut' / 'teacher.pt').write_bytes(good[:1000])
    (out / 'text' / 'teacher.pt').write_text('not a checkpoint\n')
    raw = torch.load(out / 'ok' / 'teacher.pt', weights_only=True)
    torch.save(dict(raw, tokenizer='gpt2'), out / 'tokenizer' / 'teacher.pt')
    torch.save(dict(raw, model_args=dict(raw['model_args'], d_model=32)), out / 'shape' / 'teacher.pt')
    torch.save({'x': torch.zeros(3)}, out / 'notckpt' / 'teacher.pt')
    (out / 'kind' / 'teacher.pt').write_bytes((out / 'ok' / 'student.pt').read_bytes())
    (out / 'afile').write_text('a file where a folder is expected\n')
    return out


def snapshot(folder):
    """{path: (sha1 of the bytes, mtime)} of every file under folder."""
    return {os.path.join(d, f): (hashlib.sha1(open(os.path.join(d, f), 'rb').read()).hexdigest(),
                                 os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(folder) for f in files}


def run_inline(script, args):
    """Run a script in this process with these arguments; returns what it passed to SystemExit."""
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [script, *args]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return exc.value.code


@pytest.mark.parametrize('script,args,message', [(s, a, m) for s, cases in BAD.items() for a, m in cases])
def test_bad_input_ends_in_one_error_line(script, args, message, out, capsys):
    args = args.format(out=out).split()
    if script != 'sample.py' and not any(a.startswith('--out_dir=') for a in args):
        args.append(f'--out_dir={out}/ok')  # so that a case that reads or writes files meets these
    if script in ('train_teacher.py', 'distill.py') and not any(a.startswith('--max_iters=') for a in args):
        args.append('--max_iters=1')  # should a check stop firing, the case fails in seconds, not after a whole run
    before = snapshot(out)
    code = run_inline(script, args)
    assert isinstance(code, str) and code.startswith('error: ') and '\n' not in code, code
    assert message in code, code
    assert snapshot(out) == before  # nothing written, nothing removed


@pytest.mark.parametrize('script', list(BAD))
def test_every_numeric_key_has_a_case(script, capsys):
    assert run_inline(script, ['--help']) == 0
    defaults = dict(line.strip()[2:].split('=', 1) for line in capsys.readouterr().out.splitlines()
                    if line.startswith('  --'))
    numeric = {k for k, v in defaults.items() if v.lstrip('-').replace('.', '', 1).replace('e-', '', 1).isdigit()}
    covered = {arg.split('=')[0][2:] for case, _ in BAD[script] for arg in case.split()}
    assert numeric and numeric <= covered, f'no bad-value case for {sorted(numeric - covered)}'
