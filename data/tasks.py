"""
The toy corpus: two task families with exactly checkable answers, in the roles GSM8K-CoT and MBPP play in the CDLM paper.

    math  ` 347+ 285=`                -> `>7+5+0=12<4+8+1=13>3+2+1=06 #### 632`
    math  `  20-  11=`                -> `>10-1-0=9>02-1-1=0 #### 09`
    code  `a=4;b=a+3;c=b-a;print(c)`  -> `>04+03=07;>07-04=03;#### 3`

Every response is one phrasing out of a small set of valid ones: inside each chain-of-thought step the operands of a
commutative pair come in either order, and a marker opening the step says which (`>` the larger first, `<` the smaller
first; both fit equal operands, except code's `-`, always `>`). All phrasings of a problem have the same length, so a
model learns them easily. The orders are drawn like a writer's habit: each step keeps the order of the step before it
with probability HABIT (0.7), so no order is ever certain. Math's first order is a coin flip; code's starts the habit
at larger-first, so its first marker is `>` with probability HABIT (a coin flip there left the student an arbitrary
choice to commit in the first block, and it saved under 1.5x of the teacher's passes on code: EXPERIMENTS.md).

Why this shape. A bidirectional model cannot know which order a step uses until the marker or an operand of it is
decoded, so decoding the step's tokens in parallel mixes orders: parallel decoding is hard. Threshold decoding at 0.9
must wait, one step at a time, because even a kept habit has probability 0.7 < 0.9. But the teacher's own greedy
trajectories always keep the habit (0.7 is the argmax), so they are predictable: that is what a CDLM student distilled
from them can learn to commit in one step, the way an LLM's greedy phrasing is more regular than its training text. The
marker compares the step's own two operands, so it is a local read once they are decoded (a marker that said which
operand of the problem came first needed a lookup into the prompt, which the teachers often got wrong: EXPERIMENTS.md).

Two layout rules keep every written value one local read away from what it depends on (EXPERIMENTS.md, 2026-12-02).
The math answer has a digit for every column (`#### 09`, not `#### 9`), so its digits line up with the steps' results.
A code step's operands all come before character 16, the end of the first block of 16, and only results come after:
the steps carry no variable names (step 1 assigns b, step 2 assigns c). A model that decodes block by block then
always has a step's operands written when it writes the result; with the names, step c's second operand and its result
shared the second block, and both teacher and student wrote the result first, from the program, and got it wrong.

The strict checker enumerates every valid phrasing of the problem and asks whether the response is one of them, so a
response is correct only if every step parses, uses the right digits and carries, is arithmetically right, and the final
answer is exact. Problems are generated deterministically from a seed; nothing is downloaded. The small corpus
(`--corpus=small`, CORPORA) is the same task cut down for a workshop: two-digit operands, code values 0..9.
"""
import functools
import itertools
import operator
import random
import re

FAMILIES = ('math', 'code')
N_TEST, N_VAL = 500, 200  # problems per family in the test and val splits
CORPORA = {  # name: (digits of a math operand, the code family's largest value, training problems per family)
    'full': ((2, 4), 20, {'math': 20000, 'code': 12000}),  # the code family has about 14800 distinct programs
    'small': ((2, 2), 9, {'math': 6000, 'code': 4000}),  # the workshop's: two columns, values 0..9 (5900 programs)
}
HABIT = 0.7  # probability that a step keeps the previous step's operand order (0.8 made parallel decoding too easy
#             for some teachers: EXPERIMENTS.md, 2026-12-07)
OPS = {'+': operator.add, '-': operator.sub, '*': operator.mul}  # the code family's operators
PROGRAM = re.compile(r'a=\d;b=[abc\d][+*-][abc\d];c=[abc\d][+*-][abc\d];print\([bc]\)')  # a code prompt


def math_problem(rng, digits=(2, 4)):
    """Addition or subtraction of two numbers of 2-4 digits each (`digits`); subtraction keeps the result non-negative.
    Operands are right-aligned in 4-character fields, like a sum written in columns: `  89+1234=`."""
    a, b = (rng.randint(10 ** (n - 1), 10 ** n - 1) for n in (rng.randint(*digits), rng.randint(*digits)))
    op = rng.choice('+-')
    if op == '-' and a < b:
        a, b = b, a
    return f'{a:4d}{op}{b:4d}='


def code_problem(rng, top=20):
    """A straight-line program: a=N, then b and c each from earlier values with + - *, all values kept in 0..top.
    NOTE: small values on purpose: each step does its arithmetic in one shot, and a 0.9M-parameter teacher trained
    for minutes learned products like 24*3 poorly (51% strict with values up to 99)."""
    while True:
        env = {'a': rng.randint(2, 9)}
        lines = [f"a={env['a']}"]
        for name in 'bc':
            left = rng.choice(sorted(env)[1:] or ['a']) if rng.random() < 0.7 else 'a'
            right = rng.choice(sorted(env)) if rng.random() < 0.3 else str(rng.randint(1, 9))
            op = rng.choice('+-*')
            env[name] = OPS[op](env[left], int(env.get(right, right)))
            lines.append(f'{name}={left}{op}{right}')
        if all(0 <= v <= top for v in env.values()):
            return ';'.join(lines) + f";print({rng.choice('bc')})"


def solve(prompt):
    """(steps, answer, sep): the chain of thought as a list of steps, each a tuple of its phrasings (`>` first, then
    `<` where the order is free), the final answer, and the text that joins the steps."""
    if m := re.fullmatch(r' *(\d+)([+-]) *(\d+)=', prompt):
        return *math_steps(int(m[1]), m[2], int(m[3])), ''
    if PROGRAM.fullmatch(prompt):
        return *code_steps(prompt), ';'
    raise ValueError(f'not a task prompt: {prompt!r}')


def phrasings(prompt):
    """All valid responses to a prompt (without the EOS padding). The strict checker is membership in this set."""
    steps, answer, sep = solve(prompt)
    return sorted(join_response(choice, answer, sep) for choice in itertools.product(*steps))


def join_response(step_texts, answer, sep):
    """The response text: the steps, then the answer in its one fixed form."""
    return sep.join(step_texts) + f'{sep or " "}#### {answer}'


def math_steps(a, op, b):
    """Column-wise steps, least significant digit first, each exactly 9 characters so step i always starts at the same
    offset. Addition writes the two-digit column sum (`>7+5+0=12`), the column's two digits in either order;
    subtraction writes the two-digit top digit, 1x when it borrows (`>13-5-0=8`), the subtrahend digit and the borrow
    in either order. Each step is a tuple of equivalent phrasings from either_order, `>` first."""
    steps, carry, columns = [], 0, max(len(str(a)), len(str(b)))
    for i in range(columns):
        x, y = a // 10 ** i % 10, b // 10 ** i % 10
        if op == '+':  # x+y+carry=sum
            s = x + y + carry
            steps.append(either_order(x, y, lambda u, v: f'{u}+{v}+{carry}={s:02d}'))
            carry = s // 10
        else:  # top-y-borrow=digit
            top = x + 10 if x - y - carry < 0 else x
            r = top - y - carry
            steps.append(either_order(y, carry, lambda u, v: f'{top:02d}-{u}-{v}={r}'))
            carry = int(top > x)
    return steps, str(a + b if op == '+' else a - b).zfill(columns)  # a digit per column: `#### 09`


def either_order(p, q, body):
    """The two phrasings of a step whose operands p and q commute, each opened by an order marker: `>` writes the larger
    first, `<` the smaller. The marker is read off the step's own two operands, and it tells which one comes first."""
    return '>' + body(max(p, q), min(p, q)), '<' + body(min(p, q), max(p, q))


def run_program(prompt):
    """Run a program of the code family: ({name: value}, [(u, op, v, result) per step after a]). ValueError when a step
    reads a variable not yet assigned. The one evaluator of a program: code_steps writes its steps, covers checks them."""
    env, ops = {'a': int(prompt[2])}, []
    for name, left, op, right in re.findall(r'([bc])=([abc\d])([+*-])([abc\d])', prompt):
        if not all(t in env or t.isdigit() for t in (left, right)):
            raise ValueError(f'{name} uses a variable not yet assigned')
        u, v = (env[t] if t in env else int(t) for t in (left, right))
        env[name] = OPS[op](u, v)
        ops.append((u, op, v, env[name]))
    return env, ops


def code_steps(prompt):
    """One step per assignment after `a` (b, then c): order marker, value op value=result, every value in a two-digit
    field so each step has the same width. + and * take either order (`>04+03=07` or `<03+04=07`); - only `>`, since
    its first value is never the smaller (every value is in 0..20). No names: with them step c's second operand fell
    into the second block beside its result (see the module docstring)."""
    env, ops = run_program(prompt)
    steps = []
    for u, op, v, r in ops:
        body = lambda p, q: f'{p:02d}{op}{q:02d}={r:02d}'
        steps.append(either_order(u, v, body) if op in '+*' else ('>' + body(u, v),))
    return steps, env[prompt[-2]]


def of_family(problems, family):
    """The problems (prompt, response, family) of one family, in their order."""
    return [q for q in problems if q[2] == family]


def per_family(problems, n):
    """The first n problems of each family, families in FAMILIES order."""
    return [q for fam in FAMILIES for q in of_family(problems, fam)[:n]]


def normalize(prompt):
    """Put a math prompt typed by hand (`347+285=`) into the corpus layout (` 347+ 285=`); others are unchanged."""
    if m := re.fullmatch(r' *(\d{1,4}) *([+-]) *(\d{1,4}) *=?', prompt):
        return f'{int(m[1]):4d}{m[2]}{int(m[3]):4d}='
    return prompt


def covers(prompt, corpus='full'):
    """'' when the corpus could hold this prompt (after normalize), else what lies outside it. The full corpus covers
    sums and differences of two numbers of 2-4 digits with a result >= 0, and the code family's programs with a in
    2..9 and every value in 0..20; the small one 2 digits and 0..9. A model may still decode anything else, but it
    never learned it.
    >>> covers('12345+1=')
    'operands of 2-4 digits only (got 12345 and 1)'
    """
    (lo, hi), top, _ = CORPORA[corpus]
    span = f'{lo}-{hi}' if lo < hi else f'{lo}'
    if m := re.fullmatch(r' *(\d+)([+-]) *(\d+)=', prompt):
        a, op, b = int(m[1]), m[2], int(m[3])
        if not all(lo <= len(d) <= hi and d[0] != '0' for d in (m[1], m[3])):
            return f'operands of {span} digits only (got {m[1]} and {m[3]})'
        return 'results >= 0 only' if op == '-' and a < b else ''
    if PROGRAM.fullmatch(prompt):
        try:
            env, _ = run_program(prompt)
        except ValueError as e:
            return str(e)
        if not (2 <= env['a'] <= 9 and all(0 <= v <= top for v in env.values())):
            return f'values a in 2..9 and all in 0..{top} only (got {env})'
        return ''
    return 'not a math prompt (`347+285=`) or a program like `a=4;b=a+3;c=b-a;print(c)`'


def check(prompt, response):
    """(strict, answer_only): strict = the whole response is a valid phrasing; answer_only = `#### N` is right."""
    valid = phrasings(prompt)
    want = valid[0].rsplit('#### ', 1)[1]
    got = re.search(r'#### (-?\d+)$', response)
    return response in valid, bool(got) and got[1] == want


def render(prompt, rng):
    """One phrasing, its orders drawn as a habit: each step keeps the order of the one before with probability HABIT,
    from a coin flip before math's first step and from larger-first before code's (`sep` is `;` only for code). A
    step with one valid order (code's `-`) takes it, and that sets the habit."""
    steps, answer, sep = solve(prompt)
    order, text = 0 if sep else rng.randint(0, 1), []
    for step in steps:
        order = min(len(step) - 1, order if rng.random() < HABIT else 1 - order)
        text.append(step[order])
    return join_response(text, answer, sep)


@functools.lru_cache(maxsize=4)
def build_splits(seed=1337, corpus='full'):
    """{split: [(prompt, response, family)]} of a corpus in CORPORA. Test and val problems come first and are never
    seen in training. Cached: callers share one copy and must not modify it."""
    digits, top, n_train = CORPORA[corpus]
    rng, seen, splits = random.Random(seed), set(), {'test': [], 'val': [], 'train': []}
    for split in ('test', 'val', 'train'):
        for family, make in (('math', lambda r: math_problem(r, digits)), ('code', lambda r: code_problem(r, top))):
            n = n_train[family] if split == 'train' else N_TEST if split == 'test' else N_VAL
            count = 0
            while count < n:
                prompt = make(rng)
                if prompt not in seen:
                    seen.add(prompt)
                    splits[split].append((prompt, render(prompt, rng), family))
                    count += 1
    train = {p for p, _, _ in splits['train']}
    assert not train & {p for p, _, _ in splits['test'] + splits['val']}, 'train overlaps test/val'
    return splits
