"""inspect/gaps: the `ei` numbers seen of a session, as ranges, and the holes between them."""

import random

from enhrec_wrap.inspect import gaps


def test_ranges_merge_in_any_order():
    rng = random.Random(11)
    numbers = list(range(200))
    for _ in range(50):
        rng.shuffle(numbers)
        kept = set(numbers[:150])
        eis = gaps.Eis()
        for n in numbers[:150]:
            assert eis.add(n)
        assert not eis.add(numbers[0])   # twice is once
        expected, run = [], None
        for n in range(max(kept) + 1):
            if n not in kept:
                run = (run[0], n) if run and run[1] == n - 1 else (n, n)
                if expected and expected[-1][0] == run[0]:
                    expected[-1] = run
                else:
                    expected.append(run)
        assert eis.gaps() == expected
        assert all((n in eis) == (n in kept) for n in range(210))


def test_gaps_from_zero_to_the_end():
    eis = gaps.Eis()
    for n in (98, 99, 100, 103):
        eis.add(n)
    assert eis.gaps() == [(0, 97), (101, 102)]
    assert eis.gaps(from_zero=False) == [(101, 102)]
    assert eis.gaps(upto=105) == [(0, 97), (101, 102), (104, 105)]
    assert gaps.count(eis.gaps()) == 100
    assert gaps.text(eis.gaps()) == "ei 0-97, 101-102"
    assert gaps.Eis().gaps(upto=3) == [(0, 3)] and gaps.Eis().gaps() == []


def test_what_is_not_a_number_is_not_taken():
    eis = gaps.Eis()
    assert not eis.add(None) and not eis.add("3") and not eis.add(True) and not eis.add(-1)
    assert not eis
