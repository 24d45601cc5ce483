"""The toy corpus: deterministic, disjoint splits, and a strict checker that rejects any broken step."""
import random

import pytest

import cdlm
from data import tasks


def test_splits_are_deterministic_disjoint_and_large_enough():
    a = tasks.build_splits()
    assert a == tasks.build_splits.__wrapped__()  # a fresh build, not the cached copy
    train = {p for p, _, _ in a['train']}
    for split in ('test', 'val'):
        assert not train & {p for p, _, _ in a[split]}, f'{split} overlaps train'
        for fam in tasks.FAMILIES:
            n = sum(f == fam for _, _, f in a[split])
            assert n >= (500 if split == 'test' else 1), f'{split}/{fam} has only {n} problems'
    assert tasks.build_splits(seed=1) != a


def test_every_response_is_valid_and_fits_the_canvas():
    enc = cdlm.get_tokenizer()
    splits = tasks.build_splits()
    for p, r, _ in splits['test'] + splits['train'][:2000]:
        assert tasks.check(p, r) == (True, True), (p, r)
        assert len(enc.encode_ordinary(p)) <= 24 and len(enc.encode_ordinary(r)) <= 48, (p, r)


def test_math_checker_by_hand():
    ok = '>7+5+0=12<4+8+1=13>3+2+1=06 #### 632'
    assert tasks.check(' 347+ 285=', ok) == (True, True)
    assert tasks.check(' 347+ 285=', '<5+7+0=12>8+4+1=13<2+3+1=06 #### 632') == (True, True)  # order is free
    assert tasks.check(' 347+ 285=', '>5+7+0=12<4+8+1=13>3+2+1=06 #### 632') == (False, True)  # `>` is larger first
    assert tasks.check(' 347+ 285=', '<7+5+0=12<4+8+1=13>3+2+1=06 #### 632') == (False, True)  # `<` is smaller first
    assert tasks.check(' 347+ 285=', '>7+5+0=12<4+8+0=12>3+2+1=06 #### 632') == (False, True)  # dropped carry
    assert tasks.check(' 347+ 285=', '>7+7+0=12<4+8+1=13>3+2+1=06 #### 632') == (False, True)  # wrong digit
    assert tasks.check(' 347+ 285=', '>7+5+0=12<4+8+1=13>3+2+1=6 #### 632') == (False, True)  # not two digits
    assert tasks.check(' 347+ 285=', '>7+5+0=12<4+8+1=13>3+2+1=06 #### 633') == (False, False)
    assert tasks.check(' 347+ 285=', ok + ' ') == (False, False)
    assert tasks.check(' 502-  37=', '>12-7-0=5>00-3-1=6>05-1-0=4 #### 465') == (False, True)  # 0-3-1 borrows
    assert tasks.check(' 502-  37=', '>12-7-0=5<10-1-3=6<05-0-1=4 #### 465') == (True, True)
    assert tasks.check(' 502-  37=', '>12-7-0=5<10-1-3=6>05-0-1=4 #### 465') == (False, True)  # 0 < 1: not `>`
    for marker in '><':  # equal digits fit either marker
        assert tasks.check('  22+  24=', f'>4+2+0=06{marker}2+2+0=04 #### 46') == (True, True)


def test_code_checker_by_hand():
    p = 'a=4;b=a+3;c=b*a;print(c)'
    assert tasks.check(p, '>04+03=07;>07*04=28;#### 28') == (True, True)
    assert tasks.check(p, '<03+04=07;<04*07=28;#### 28') == (True, True)
    assert tasks.check(p, '>03+04=07;>07*04=28;#### 28') == (False, True)  # marker disagrees
    assert tasks.check(p, '>4+3=7;>7*4=28;#### 28') == (False, True)  # values fill two-digit fields
    assert tasks.check(p, '>04+03=07;>07*04=29;#### 28') == (False, True)
    assert tasks.check(p, '>04+03=07;>07*04=28;#### 7') == (False, False)
    assert tasks.check('a=5;b=a-2;c=b-1;print(b)', '<02-05=03;>03-01=02;#### 3') == (False, True)  # - is ordered
    assert tasks.check('a=5;b=a-a;c=b+1;print(c)', '<05-05=00;>01+00=01;#### 1') == (False, True)  # even when equal
    # the marker orders values, not the program's operands: `b=a+9` with a=3 writes 09 first after `>`
    assert tasks.check('a=3;b=a+9;c=b-5;print(c)', '>09+03=12;>12-05=07;#### 7') == (True, True)
    assert tasks.check('a=3;b=a+9;c=b-5;print(c)', '>03+09=12;>12-05=07;#### 7') == (False, True)


def test_render_draws_every_phrasing():
    rng = random.Random(0)
    seen = {tasks.render('  12+  34=', rng) for _ in range(200)}
    assert seen == set(tasks.phrasings('  12+  34=')) and len(seen) == 2 * 2


def test_render_orders_follow_the_habit():
    """Math's first order is a fair coin, code's starts the habit at larger-first (so its first marker is `>` with
    probability HABIT); each later step keeps the previous order with probability HABIT."""
    rng, n = random.Random(0), 4000
    markers = [[r[9 * i] for i in range(4)] for r in (tasks.render('1234+5678=', rng) for _ in range(n))]
    first = sum(m[0] == '>' for m in markers) / n
    kept = sum(m[i] == m[i - 1] for m in markers for i in range(1, 4)) / (3 * n)
    assert abs(first - 0.5) < 0.03 and abs(kept - tasks.HABIT) < 0.03, (first, kept)
    # a step with one valid order (code's `-` is `>` only) takes it, and the next step follows it
    codes = [tasks.render('a=9;b=a-2;c=b+3;print(c)', rng) for _ in range(1000)]
    assert all(r[0] == '>' for r in codes)
    assert abs(sum(r[10] == '>' for r in codes) / 1000 - tasks.HABIT) < 0.04
    codes = [tasks.render('a=3;b=a+4;c=b*2;print(c)', rng) for _ in range(n)]
    assert abs(sum(r[0] == '>' for r in codes) / n - tasks.HABIT) < 0.03


def test_normalize_puts_typed_math_in_columns():
    assert tasks.normalize('347+85=') == ' 347+  85=' and tasks.normalize('12 - 3') == '  12-   3='
    assert tasks.normalize('a=4;b=a+3;c=b*a;print(c)') == 'a=4;b=a+3;c=b*a;print(c)'


def test_per_family_takes_the_first_n_of_each():
    problems = [('m1', '', 'math'), ('c1', '', 'code'), ('m2', '', 'math'), ('m3', '', 'math'), ('c2', '', 'code')]
    assert tasks.per_family(problems, 2) == [problems[0], problems[2], problems[1], problems[4]]


def test_of_family_keeps_one_family_in_order():
    problems = [('m1', '', 'math'), ('c1', '', 'code'), ('m2', '', 'math'), ('c2', '', 'code')]
    assert tasks.of_family(problems, 'code') == [problems[1], problems[3]]
    assert tasks.of_family(problems, 'math') == [problems[0], problems[2]]


def test_every_result_is_written_after_its_operands_block():
    """The layout rule: a code step's operands end before character 16 (the first block of 16), so its result never
    shares a block with an operand still to be written; a math answer has one digit per column."""
    splits = tasks.build_splits()
    for p, r, fam in splits['test'] + splits['train'][:3000]:
        if fam == 'code':
            steps = r.split(';')[:2]
            assert [len(s) for s in steps] == [9, 9] and r.index('=', 10) == 16, (p, r)  # `>07-04` ends at 15
        else:
            columns = len(tasks.solve(p)[0])
            answer = r.rsplit(' ', 1)[1]
            assert len(answer) in (columns, columns + 1) and (len(answer) == columns or answer[0] == '1'), (p, r)
    assert tasks.phrasings('  20-  11=') == ['<10-0-1=9<02-1-1=0 #### 09', '<10-0-1=9>02-1-1=0 #### 09',
                                             '>10-1-0=9<02-1-1=0 #### 09', '>10-1-0=9>02-1-1=0 #### 09']
    assert tasks.phrasings('a=4;b=a+3;c=b-a;print(c)') == ['<03+04=07;>07-04=03;#### 3', '>04+03=07;>07-04=03;#### 3']


def test_run_program_evaluates_each_step_in_order():
    """The code family's one evaluator: every step's operands and result, by hand; a name read before it is assigned
    is an error, and covers says so."""
    assert tasks.run_program('a=4;b=a+3;c=b-a;print(c)') == ({'a': 4, 'b': 7, 'c': 3}, [(4, '+', 3, 7), (7, '-', 4, 3)])
    assert tasks.run_program('a=2;b=a*a;c=b*b;print(b)') == ({'a': 2, 'b': 4, 'c': 16}, [(2, '*', 2, 4), (4, '*', 4, 16)])
    with pytest.raises(ValueError, match='b uses a variable not yet assigned'):
        tasks.run_program('a=4;b=c+3;c=b-a;print(c)')
    assert tasks.covers('a=4;b=a+3;c=c-a;print(c)') == 'c uses a variable not yet assigned'


def test_covers_names_what_lies_outside_the_corpus():
    """Every corpus prompt is covered; the prompts a new user tries first are not, each with its reason."""
    assert not [p for split in tasks.build_splits().values() for p, _, _ in split if tasks.covers(p)]
    assert tasks.covers(tasks.normalize('347+285=')) == '' and tasks.covers('a=4;b=a+3;c=b-a;print(c)') == ''
    assert '2-4 digits' in tasks.covers(tasks.normalize('12345+1=')) and '2-4 digits' in tasks.covers('   5-   9=')
    assert 'results >= 0' in tasks.covers(tasks.normalize('59-90='))
    assert 'not a math prompt' in tasks.covers('hello') and '0..20' in tasks.covers('a=9;b=a*9;c=b-a;print(c)')


def test_the_small_corpus_is_the_full_one_cut_down():
    """The workshop's corpus (--corpus=small): two-digit operands and code values 0..9, every problem one of the full
    corpus's kind, no prompt in two splits, every response a valid phrasing of its prompt."""
    small = tasks.build_splits(corpus='small')
    assert [len(small[s]) for s in ('test', 'val', 'train')] == [1000, 400, 10000]
    prompts = [p for split in small.values() for p, _, _ in split]
    assert len(set(prompts)) == len(prompts)
    for p, r, fam in small['test'] + small['train'][:3000]:
        assert tasks.covers(p, 'small') == '' == tasks.covers(p) and tasks.check(p, r) == (True, True), (p, r)
    assert '2 digits' in tasks.covers(' 347+ 285=', 'small')
    assert '0..9' in tasks.covers('a=9;b=a+9;c=b-a;print(c)', 'small') and not tasks.covers('a=9;b=a+9;c=b-a;print(c)')
