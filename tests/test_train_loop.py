"""cdlm.train_loop: the loop both training scripts share (steps, logs, evaluations, checkpoints, Ctrl-C)."""
import pytest
import torch

import cdlm


def run(start, max_iters, interrupt_at=None):
    """Drive train_loop with a fake step; record every call in order."""
    calls = []

    def step(it):
        if it == interrupt_at:
            raise KeyboardInterrupt
        calls.append(('step', it))
        return dict(loss=torch.tensor(float(it)), lr=0.5)

    def evaluate():
        calls.append(('eval',))
        return dict(acc=len(calls))

    def save(it, metrics):
        calls.append(('save', it, metrics))

    out = cdlm.train_loop(step, start, max_iters, 4, evaluate, save, 'cpu', log_interval=5)
    return calls, out


def test_train_loop_steps_evaluates_and_saves_at_each_interval_and_at_the_end(capsys):
    calls, out = run(0, 10)
    assert [c[1] for c in calls if c[0] == 'step'] == list(range(10))
    saves = [c for c in calls if c[0] == 'save']
    assert [s[1] for s in saves] == [4, 8, 10]  # every eval_interval, and the last step
    assert calls[4:7] == [('eval',), ('save', 4, dict(acc=5)), ('step', 4)]  # after 4 steps: evaluate, save, go on
    assert out == saves[-1][2]  # returns the last metrics
    log = capsys.readouterr().out
    assert 'iter 5: loss 4, lr 0.5' in log and 'iter 10: loss 9, lr 0.5' in log and 'iter 4:' not in log
    assert 'eval 8: acc' in log and 'done: 10 iters' in log


def test_train_loop_resumes_from_iter_num():
    calls, _ = run(6, 10)
    assert [c[1] for c in calls if c[0] == 'step'] == [6, 7, 8, 9]
    assert [c[1] for c in calls if c[0] == 'save'] == [8, 10]


def test_train_loop_ctrl_c_saves_the_last_metrics_and_exits_130():
    with pytest.raises(SystemExit) as e:
        run(0, 10, interrupt_at=6)
    assert e.value.code == 130


def test_train_loop_ctrl_c_checkpoint_holds_the_steps_done():
    saved = []

    def step(it):
        if it == 6:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(SystemExit):
        cdlm.train_loop(step, 0, 10, 4, lambda: dict(acc=1.0), lambda it, m: saved.append((it, m)), 'cpu')
    assert saved == [(4, dict(acc=1.0)), (6, dict(acc=1.0))]  # steps 0..5 done: the checkpoint says iter 6
