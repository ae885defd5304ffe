"""The injection heuristics measured on public attacks and realistic benign tool output (pure).

Corpora: ``tests/guard/corpus`` (see ``build.py`` for every source). The bar: at least half of
the public indirect injections detected, at most 1% of benign tool outputs flagged. The held-out
garak set is reported, not asserted: it shows how far a fixed set of patterns generalizes.
"""

from __future__ import annotations

import pytest

from tests.guard.corpus.measure import benign, heldout, malicious, measure, report, wilson

pytestmark = pytest.mark.unit


def test_the_corpora_are_of_a_useful_size() -> None:
    attacks, clean = malicious(), benign()
    assert len(attacks) >= 250 and len(clean) >= 300
    assert len({s.group for s in attacks}) >= 10 and len({s.group for s in clean}) >= 10
    assert not {s.text for s in attacks} & {s.text for s in clean}


def test_detection_and_false_positives_meet_the_bar() -> None:
    rates = measure()
    held = measure(attacks=heldout())
    print(report(rates))
    print(f"held out: {held.detected}/{held.attacks} = {held.detection:.1%}")
    assert rates.detection >= 0.5, report(rates)
    assert rates.false_positive_rate <= 0.01, [(s.group, sig, s.text[:120]) for s, sig in rates.false_positives]


def test_the_measure_can_fail() -> None:
    """A detector that flags everything meets detection and fails false positives; one that
    flags nothing the reverse: the bar measures both sides."""
    everything = measure(lambda text: (True, ("all",)))
    nothing = measure(lambda text: (False, ()))
    assert everything.detection == 1.0 and everything.false_positive_rate == 1.0
    assert nothing.detection == 0.0 and nothing.false_positive_rate == 0.0
    assert wilson(0, 10)[0] == 0.0 and 0.0 < wilson(5, 10)[0] < 0.5 < wilson(5, 10)[1] < 1.0
