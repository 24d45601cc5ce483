"""The --key=value parser, device helpers and checkpoints: coercions, clear errors, atomic weights_only files."""
import os
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
    assert not os.path.exists(path + '.tmp')
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
