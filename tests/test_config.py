"""The --key=value parser, device helpers and checkpoints: coercions, clear errors, atomic weights_only files."""
import glob
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

import cdlm


def test_configure_coerces_and_updates_scope():
    scope = {'lr': 1e-3, 'n': 3, 'flag': False, 'name': 'a', 'opt': None, '_private': 1, 'module': os}
    config = cdlm.configure(scope, ['--lr=2', '--n=4', '--flag', '--name=b', '--opt=0.5'])
    assert config == {'lr': 2.0, 'n': 4, 'flag': True, 'name': 'b', 'opt': 0.5}
    assert isinstance(config['lr'], float) and scope['n'] == 4 and scope['_private'] == 1
    assert cdlm.configure({'n': 3}, ['--n=None'])['n'] is None
    assert cdlm.configure({'flag': True}, ['--flag=false'])['flag'] is False


@pytest.mark.parametrize('argv,message', [
    (['--nope=1'], "unknown config key 'nope'; valid keys: lr, n"),
    (['--n=1.5'], '--n=1.5: expected a int'),
    (['--lr=fast'], '--lr=fast: expected a float'),
    (['lr=1'], "bad argument 'lr=1'"),
])
def test_configure_rejects_bad_input(argv, message):
    with pytest.raises(SystemExit, match=message):
        cdlm.configure({'lr': 1e-3, 'n': 3}, argv)


@pytest.mark.parametrize('rule,good,bad,message', [
    ('>0', [1, 0.5], [0, -1], 'must be > 0'),
    ('>0', [], [None, True, 'x', float('inf'), float('nan')], 'expected a finite number'),
    ('>=0', [0, 2.5], [-1, -1e-9], 'must be >= 0'),
    ('0..1', [0, 0.9, 1], [1.01, -0.1], 'must be in 0..1'),
    ('1..257', [1, 257], [0, 258], 'must be in 1..257'),
    ('ints>0', ['1', '1,2,4'], ['a', '1,0', '1.5', ''], 'comma-separated integers > 0'),
    ('floats>=0', ['0', '0,0.5'], ['abc', '0,-1'], 'comma-separated numbers >= 0'),
    ('scratch|resume', ['scratch', 'resume'], ['fresh', ''], "use 'scratch' or 'resume'"),
    ('name', ['teacher.pt', 'runs/a.pt'], ['', ' ', 'sub/'], 'expected a file name'),
    ('device', ['auto', 'cpu'], ['gpu', 'tpu:0', 'cpu:0', 'cuda:x'], "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
])
def test_check_config_rules(rule, good, bad, message):
    for val in good:
        cdlm.check_config({'key': val}, {rule: 'key'})
    for val in bad:
        with pytest.raises(SystemExit) as exc:
            cdlm.check_config({'key': val}, {rule: 'key'})
        assert str(exc.value).startswith(f'error: --key={val}: ') and message in str(exc.value)


def test_check_config_paths_and_relations(tmp_path):
    (tmp_path / 'afile').write_text('x')
    cdlm.check_config({'out_dir': 'new/sub', 'json': 'new/b.json'}, {'folder': 'out_dir', 'file': 'json'},
                      str(tmp_path))
    for rules, message in [({'folder': 'out_dir'}, 'is a file, not a folder'), ({'file': 'json'}, 'not a folder')]:
        with pytest.raises(SystemExit, match=message):
            cdlm.check_config({'out_dir': 'afile', 'json': 'afile/b.json'}, rules, str(tmp_path))
    with pytest.raises(SystemExit, match='a folder, not a file'):
        cdlm.check_config({'json': '.'}, {'file': 'json'}, str(tmp_path))
    ok = dict(gen_len=48, block_size=16, d_model=128, n_head=4, lr=1e-3, min_lr=1e-4, w_distill=0, w_cons=0, w_dlm=1)
    cdlm.check_config(ok, {})
    for change, message in [(dict(block_size=10), 'not a multiple of block_size=10'),
                            (dict(n_head=3), 'heads of even width'), (dict(d_model=132), 'heads of even width'),
                            (dict(min_lr=1e-2), 'above lr'), (dict(w_dlm=0), 'every loss weight is 0')]:
        with pytest.raises(SystemExit, match=message):
            cdlm.check_config(dict(ok, **change), {})


def test_configure_checks_the_rules_after_the_overrides():
    assert cdlm.configure({'n': 3}, ['--n=5'], rules={'>0': 'n'}) == {'n': 5}
    with pytest.raises(SystemExit, match='--n=0: must be > 0'):
        cdlm.configure({'n': 3}, ['--n=0'], rules={'>0': 'n'})


def test_configure_help_prints_defaults(capsys):
    with pytest.raises(SystemExit):
        cdlm.configure({'lr': 1e-3}, ['--help'], doc='usage')
    assert '--lr=0.001' in capsys.readouterr().out


def test_device_helpers_on_cpu():
    assert cdlm.pick_device('cpu') == 'cpu'
    assert cdlm.pick_device('auto') in ('cuda', 'mps', 'cpu')
    ones = torch.ones(2, 2)
    with cdlm.autocast('cpu'):  # decoding on a CPU: always fp32
        assert ones.matmul(ones).dtype == torch.float32
    with cdlm.autocast('cpu', cpu_bf16=True):  # training: bf16 only where the CPU has it natively
        assert ones.matmul(ones).dtype == (torch.bfloat16 if cdlm.cpu_has_bf16() else torch.float32)
    assert isinstance(cdlm.cpu_has_bf16(), bool)


def test_gpu_paths_without_a_gpu(monkeypatch):
    """The CUDA branches, checked on a CPU: timing waits for the GPU only on CUDA, and CUDA autocasts to bf16."""
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda: calls.append(1))
    cdlm.synchronize('cpu')
    assert calls == []
    cdlm.synchronize('cuda')
    cdlm.synchronize('cuda:1')
    assert calls == [1, 1]
    with warnings.catch_warnings():  # torch warns that CUDA is missing, and disables the context: fine here
        warnings.simplefilter('ignore')
        ctx = cdlm.autocast('cuda')
    assert isinstance(ctx, torch.autocast) and ctx.device == 'cuda' and ctx.fast_dtype == torch.bfloat16


def test_cosine_lr_schedule():
    lrs = [cdlm.cosine_lr(i, 1.0, 0.1, 10, 110) for i in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


def test_checkpoint_round_trip_and_errors(tmp_path, tiny_model):
    path = str(tmp_path / 'sub' / 'm.pt')
    opt = torch.optim.AdamW(tiny_model.parameters())
    cdlm.save_checkpoint(path, tiny_model, 'teacher', {'block_size': 4}, 7, {'acc': torch.tensor(0.5)}, opt)
    assert glob.glob(str(tmp_path / 'sub' / '*.tmp')) == []  # the temporary file was renamed into place
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # a plain file's permissions, not mkstemp's 0600
    raw = torch.load(path, weights_only=True)  # a plain dict: no pickled classes
    assert raw['kind'] == 'teacher' and raw['metrics'] == {'acc': 0.5} and raw['block_size'] == 4
    model, ckpt = cdlm.load_checkpoint(path)
    x = torch.randint(0, 256, (1, 8))
    assert torch.equal(model.eval()(x), tiny_model(x)) and ckpt['iter_num'] == 7
    with pytest.raises(SystemExit, match='create it with `python train_teacher.py`'):
        cdlm.load_checkpoint(str(tmp_path / 'missing.pt'))
    raw['tokenizer'] = 'gpt2'
    torch.save(raw, path)
    with pytest.raises(SystemExit, match="made with tokenizer 'gpt2'"):
        cdlm.load_checkpoint(path)


def test_fingerprint_tells_models_apart(tiny_model):
    a = cdlm.fingerprint(tiny_model)
    assert a == cdlm.fingerprint(tiny_model) and len(a) == 12
    with torch.no_grad():
        tiny_model.wte.weight[0, 0] += 1e-3
    assert cdlm.fingerprint(tiny_model) != a


def test_optimizer_step_sets_lr_clips_and_updates(tiny_model):
    opt = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
    before = tiny_model.wte.weight.detach().clone()
    loss = tiny_model(torch.randint(0, 256, (2, 8))).pow(2).sum() * 1e6  # a huge gradient
    cdlm.optimizer_step(tiny_model, opt, loss, lr=0.5, grad_clip=1.0)
    assert opt.param_groups[0]['lr'] == 0.5
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in tiny_model.parameters() if p.grad is not None))
    assert abs(norm - 1.0) < 1e-3, norm  # clipped to grad_clip
    step = (tiny_model.wte.weight.detach() - before).abs().max()
    assert 0 < step <= 0.5 + 1e-6, step


def newton_schulz(g, steps=5, a=3.4445, b=-4.775, c=2.0315):
    """Muon's orthogonalization, written out from Jordan et al. (2024): the quintic iteration on the normalized
    matrix, the shorter side first, in bf16 as the reference runs it."""
    x = (g / g.norm()).bfloat16()
    x = x.T if g.shape[0] > g.shape[1] else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if g.shape[0] > g.shape[1] else x).float()


def test_make_optimizer_muon_on_block_matrices_adamw_on_the_rest(tiny_model, tmp_path):
    """'muon': every block matrix and nothing else under Muon. Its first step of a matrix matches the reference:
    -lr * 0.2 * sqrt(max(A, B)) * newton_schulz(grad) (Moonshot's scale); AdamW's first is lr * sign(grad).
    Every group takes optimizer_step's lr, and the state survives a checkpoint."""
    opt = cdlm.make_optimizer(tiny_model, 'muon', lr=0.01)
    adamw, muon = opt.optimizers
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g['params']}
    assert in_muon == {n for n, p in tiny_model.named_parameters() if n.startswith('blocks.') and p.dim() == 2}
    assert len(in_muon) + sum(len(g['params']) for g in adamw.param_groups) == len(names)
    w, e = tiny_model.blocks[0].qkv.weight, tiny_model.wte.weight
    before = {p: p.detach().clone() for p in (w, e)}
    torch.manual_seed(0)  # gradients made by hand: w's well conditioned (singular values 0.5 to 1), so bf16 agrees
    grads = {p: torch.randn_like(p) for p in tiny_model.parameters()}
    u, _, v = torch.linalg.svd(grads[w], full_matrices=False)
    grads[w] = u @ torch.diag(torch.linspace(1, 0.5, len(v))) @ v
    cdlm.optimizer_step(tiny_model, opt, sum((p * g).sum() for p, g in grads.items()), 0.02, 0)
    assert all(g['lr'] == 0.02 for g in opt.param_groups)
    want = -0.02 * 0.2 * max(w.shape) ** 0.5 * newton_schulz(grads[w])
    assert (w.detach() - before[w] - want).abs().max() < 0.1 * want.abs().max()  # bf16 rounding apart
    assert torch.allclose(e.detach() - before[e], -0.02 * grads[e].sign(), atol=1e-4)
    cdlm.save_checkpoint(str(tmp_path / 'm.pt'), tiny_model, 'teacher', {'block_size': 4}, 1, {}, opt)
    again = cdlm.make_optimizer(tiny_model, 'muon', lr=0.01)
    again.load_state_dict(torch.load(tmp_path / 'm.pt', weights_only=True)['optimizer'])
    assert torch.equal(again.optimizers[1].state[w]['momentum_buffer'], muon.state[w]['momentum_buffer'])
    assert isinstance(cdlm.make_optimizer(tiny_model, 'adamw', lr=0.01), torch.optim.AdamW)


def test_train_or_finish_trains_resumes_or_leaves_alone(tmp_path, capsys):
    """A stand-in script records its arguments: it runs for a missing checkpoint, runs with --init_from=resume for one
    that stopped short of its max_iters, does not run for a finished one, and a failing run stops with one line."""
    log, ckpt = tmp_path / 'args.txt', str(tmp_path / 'm.pt')
    script = tmp_path / 'fake.py'
    script.write_text(f'import sys\nopen({str(log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")\n'
                      'sys.exit(3 if "--fail" in sys.argv else 0)\n')
    cdlm.train_or_finish(ckpt, str(script), ['--a=1'], 'model')
    torch.save(dict(iter_num=5, config=dict(max_iters=10)), ckpt)
    cdlm.train_or_finish(ckpt, str(script), ['--a=2'], 'model')
    torch.save(dict(iter_num=10, config=dict(max_iters=10)), ckpt)
    cdlm.train_or_finish(ckpt, str(script), ['--a=3'], 'model')
    assert log.read_text().splitlines() == ['--a=1', '--a=2 --init_from=resume']
    assert 'stopped at iter 5 of 10: finishing it' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='training the model failed'):
        cdlm.train_or_finish(str(tmp_path / 'none.pt'), str(script), ['--fail'], 'model')


def test_checkpoint_writes_survive_kill_and_a_second_writer(tmp_path):
    """Two processes save to one checkpoint path as fast as they can while this one reads it, then both are killed
    with SIGKILL, likely mid-write. Every read and the file left behind load whole, and neither writer failed:
    each writes a temporary file of its own and renames it into place (save_atomic)."""
    path = str(tmp_path / 'm.pt')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    writer = (f'import sys; sys.path.insert(0, {root!r}); import cdlm\n'
              'model = cdlm.Transformer(seq_len=32, n_layer=2, n_head=2, d_model=64)\n'
              f'for i in range(10 ** 9):\n'
              f'    cdlm.save_checkpoint({path!r}, model, "teacher", dict(block_size=4), i, {{}})\n')
    procs = [subprocess.Popen([sys.executable, '-c', writer]) for _ in range(2)]
    try:
        for _ in range(600):  # wait for the first file, up to a minute
            if os.path.exists(path) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        for _ in range(40):
            assert cdlm.load_checkpoint(path)[1]['kind'] == 'teacher'
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), 'a writer failed'
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert cdlm.load_checkpoint(path)[1]['iter_num'] >= 0
