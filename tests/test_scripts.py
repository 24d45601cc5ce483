"""Smoke runs of the scripts with tiny overrides, and their one-line errors on bad input."""
import os
import subprocess
import sys

import pytest
import torch

import cdlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--n_layer=1', '--d_model=32', '--batch_size=16', '--eval_problems=2', '--threads=1']


def run(script, *args, ok=True):
    res = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                         timeout=300)
    assert (res.returncode == 0) == ok, f'exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}'
    return res


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('out')
    run('train_teacher.py', f'--out_dir={out}', '--max_iters=6', '--eval_interval=3', '--final_report=0', *TINY)
    return out


@pytest.mark.slow
def test_train_teacher_writes_a_checkpoint_and_resumes(teacher_dir):
    ckpt = torch.load(teacher_dir / 'teacher.pt', weights_only=True)
    assert ckpt['kind'] == 'teacher' and ckpt['iter_num'] == 6 and ckpt['config']['n_layer'] == 1
    assert ckpt['mask_id'] == cdlm.MASK_ID and set(ckpt['metrics']) >= {'val_loss', 'acc_math', 'acc_code'}
    res = run('train_teacher.py', f'--out_dir={teacher_dir}', '--ckpt_name=teacher.pt', '--init_from=resume',
              '--max_iters=9', '--eval_interval=3', '--final_report=5', *TINY)
    assert 'resuming from' in res.stdout and 'teacher threshold 0.9 math' in res.stdout and torch.load(teacher_dir / 'teacher.pt', weights_only=True)['iter_num'] == 9


def test_sample_shows_the_denoising(teacher_dir):
    res = run('sample.py', f'--ckpt={teacher_dir}/teacher.pt', '--prompt=12+34=', '--show', '--k=1')
    nfe = int(res.stdout.split('nfe ')[1].split(',')[0])
    assert f'step {nfe:2d} ' in res.stdout and f'step {nfe + 1:2d} ' not in res.stdout and '^' in res.stdout
    lines = res.stdout.splitlines()
    for i, line in enumerate(lines[:-1]):  # with --k=1 each step marks one token: `^` sits under it, in its column
        if line.startswith('step ') and '^' in lines[i + 1]:
            col = lines[i + 1].index('^')
            prev = next((p for p in reversed(lines[:i]) if p.startswith('step ')), 'step  0  ' + '░' * len(line))
            assert line[col] != '░' and prev[col] == '░', (prev, line, lines[i + 1])


@pytest.mark.slow
def test_distill_end_to_end(teacher_dir):
    args = [f'--out_dir={teacher_dir}', '--n_traj=16', '--traj_batch=8', '--max_iters=4', '--eval_interval=2',
            '--eval_problems=2', '--batch_size=4', '--test_problems=2', '--latency_problems=1', '--threads=1']
    res = run('distill.py', *args)
    assert 'saved 16 trajectories' in res.stdout and '| student, threshold 0.9, cached' in res.stdout
    assert 'students decode the same tokens: True' in res.stdout
    student, ckpt = cdlm.load_checkpoint(str(teacher_dir / 'student.pt'))
    assert ckpt['kind'] == 'student' and ckpt['iter_num'] == 4
    res = run('distill.py', *args, '--w_cons=0', '--max_iters=2')
    assert 'reusing' in res.stdout and 'cons 0.0000' not in res.stdout.split('reusing')[0]
    res = run('distill.py', *args, '--topk=4', '--max_iters=2')
    assert 'does not match this run' in res.stdout  # trajectories from another setting are rebuilt, with a reason
    traj = teacher_dir / 'trajectories.pt'
    traj.write_bytes(traj.read_bytes()[:1000])  # a copy cut short
    res = run('distill.py', *args, '--topk=4', '--max_iters=1')
    assert 'trajectories.pt: unreadable' in res.stdout and 'rebuilding it' in res.stdout
    assert 'saved 16 trajectories' in res.stdout
    res = run('distill.py', *args, '--topk=4', '--max_iters=2', '--init_from=resume')  # one more step, as after Ctrl-C
    assert 'resuming the student' in res.stdout and torch.load(teacher_dir / 'student.pt', weights_only=True)[
        'iter_num'] == 2


@pytest.mark.slow
def test_distill_finishes_an_interrupted_teacher(teacher_dir, tmp_path):
    ckpt = torch.load(teacher_dir / 'teacher.pt', weights_only=True)
    ckpt['iter_num'], ckpt['config']['max_iters'] = 3, 6  # as if Ctrl-C had stopped a 6-step run halfway
    torch.save(ckpt, tmp_path / 'teacher.pt')
    teacher_args = ' '.join(TINY + ['--max_iters=6', '--eval_interval=3'])
    res = run('distill.py', f'--out_dir={tmp_path}', f'--teacher_args={teacher_args}', '--n_traj=4', '--traj_batch=4',
              '--max_iters=1', '--eval_problems=1', '--batch_size=2', '--test_problems=1', '--latency_problems=1',
              '--threads=1')
    assert 'stopped at iter 3 of 6: finishing it' in res.stdout and 'resuming from' in res.stdout
    assert torch.load(tmp_path / 'teacher.pt', weights_only=True)['iter_num'] == 6


SLOW = pytest.mark.slow  # a few seconds each for starting Python and torch; tests/test_bad_input.py covers every key


@pytest.mark.parametrize('script,args,message', [
    ('train_teacher.py', ['--nope=1'], "unknown config key 'nope'; valid keys: out_dir"),
    pytest.param('train_teacher.py', ['--max_iters=ten'], '--max_iters=ten: expected a int', marks=SLOW),
    pytest.param('train_teacher.py', ['--gen_len=50'], 'not a multiple of block_size', marks=SLOW),
    pytest.param('train_teacher.py', ['--block_size=0'], '--block_size=0: must be > 0', marks=SLOW),
    pytest.param('distill.py', ['--topk=0'], '--topk=0: must be in 1..257', marks=SLOW),
    ('sample.py', ['--ckpt=/nonexistent/teacher.pt'], 'create it with `python distill.py`'),
    pytest.param('sample.py', [f'--ckpt={ROOT}/README.md'], 'is unreadable', marks=SLOW),
    pytest.param('bench.py', ['--quick', '--repeats=0'], '--repeats=0: must be > 0', marks=SLOW),
])
def test_bad_input_is_one_line(script, args, message):
    """As a user meets it, in a process of its own: exit status 1 and one `error:` line (tests/test_bad_input.py
    tries every key in-process)."""
    res = run(script, *args, ok=False)
    assert res.returncode == 1 and res.stderr.startswith('error: ') and res.stderr.count('\n') == 1, res.stderr
    assert message in res.stderr, res.stderr


@pytest.mark.slow
def test_sample_fills_corrects_and_names_prompts_outside_the_corpus(teacher_dir):
    ckpt, prompt = f'--ckpt={teacher_dir}/teacher.pt', '--prompt=12+34='
    ref = cdlm.tasks.phrasings('  12+  34=')[0]  # 26 characters, the answer ` #### 46` last
    res = run('sample.py', ckpt, prompt, '--fill=' + '_' * 18 + ref[18:])
    assert 'template  ' + '_' * 18 + ' #### 46' in res.stdout
    assert res.stdout.split(' -> ')[1].split('\n')[0].endswith(' #### 46'), res.stdout  # given positions are kept
    changed = ref[:5] + ('1' if ref[5] != '1' else '2') + ref[6:]
    res = run('sample.py', ckpt, prompt, f'--correct={changed}')
    assert f'given     {changed}' in res.stdout and 're-masked' in res.stdout and 'changed   ' in res.stdout
    for args, message in [(['--fill=' + '_' * 10], 'every response to'), (['--fill=_é_'], 'not one'),
                          ([f'--correct={ref}', '--fill=__'], 'not both')]:
        res = run('sample.py', ckpt, prompt, *args, ok=False)
        assert res.stderr.startswith('error: ') and res.stderr.count('\n') == 1 and message in res.stderr, res.stderr
    res = run('sample.py', ckpt, '--fill=__', ok=False)
    assert 'need the --prompt' in res.stderr
    res = run('sample.py', ckpt, '--prompt=hello', '--k=8')
    assert 'lies outside the full corpus this model learned (not a math prompt' in res.stdout
    assert 'no checker' in res.stdout


def test_bad_input_with_a_checkpoint(teacher_dir):
    res = run('sample.py', f'--ckpt={teacher_dir}/teacher.pt', '--prompt=' + '1' * 30 + '+1=', ok=False)
    assert 'longer than' in res.stderr and 'Traceback' not in res.stderr
    res = run('distill.py', f'--out_dir={teacher_dir}', '--prompt_len=20', ok=False)
    assert 'prompt_len + gen_len' in res.stderr and 'Traceback' not in res.stderr


def test_help_lists_defaults():
    res = run('distill.py', '--help')
    assert '--w_cons=0.5' in res.stdout and '--block_size=16' in res.stdout


@pytest.mark.slow
def test_bench_quick_reports_every_row_and_column(tmp_path):
    import json
    out = run('bench.py', '--quick', f'--json={tmp_path}/bench.json', '--threads=1', '--batches=1,4',
              '--timed_problems=8', '--repeats=1', '--scaling=1,2', '--frontier=0.5,0.9').stdout
    res = json.loads((tmp_path / 'bench.json').read_text())
    assert len(res['rows']) == 6 and len(res['sweep']) == 12 and len(res['cache_scaling']) == 2
    for name, row in res['rows'].items():
        assert {'acc_math', 'acc_code', 'nfe_math', 'tokens_per_step', 'latency_s', 'tokens_per_s', 'speedup',
                'outputs_sha1'} <= set(row), name
    for r in res['sweep']:
        assert r['same_tokens'] is True and r['passes'] > 0 and r['tokens_per_s'] > 0 and 0 < r['peak_share'], r
        assert r['bound'] in ('compute', 'memory') and r['flop_per_byte'] > 0
    by = {(r['row'], r['batch']): r for r in res['sweep']}
    assert by['teacher, 1 token/step', 1]['passes'] == 8 * 48  # one pass per token, for each of the 8 problems
    assert by['teacher, 1 token/step', 4]['passes'] == 2 * 48  # lockstep: two batches of 4, 48 passes each
    assert [r['batch'] for r in res['ratios']] == [1, 4] and res['peak']['flops'] > 0
    assert res['rows']['student, cached']['match'] is True
    assert res['device'] == 'cpu' and res['torch'] == torch.__version__
    for curve in ('teacher, threshold', 'student, cached'):  # the frontier: both rules at each tau, both families
        assert [r['tau'] for r in res['frontier'][curve]] == [0.5, 0.9], res['frontier']
        assert all(0 <= r['acc_code'] <= 1 and r['nfe_math'] > 0 for r in res['frontier'][curve])
    assert out.count('mean NFE') == 2 and 'math: strict accuracy against passes' in out
    bidir = res['bidirectional']  # infilling for both models where the mask allows, correction for the teacher
    assert set(bidir['student, cached']) == {'infill answer given the chain of thought'}, bidir
    assert {'infill chain of thought given the answer', 'correct 0 changed', 'correct 4 changed'} <= set(bidir['teacher'])
    assert all(0 <= r['restored'] <= 1 and 0 <= r['harm'] <= 1 for k, r in bidir['teacher'].items() if 'correct' in k)
