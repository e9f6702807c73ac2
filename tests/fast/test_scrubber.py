"""The scrubber's regex (a radix tree of every spelling of every secret) matches what the plain alternation of the
spellings, longest first, matches: at the leftmost place, and there the longest; the hex letters of a %XX escape in
either case.  The radix tree is how a process holding hundreds of spellings scrubs megabytes in a fraction of a second
(``bench/scrub.py`` measures it against the alternation); these tests pin that nothing matches differently."""

from __future__ import annotations

import random
import re
import sys

import pytest

from hcbpg.secrets import REDACTED, Scrubber, _alternation_pattern, _radix_regex, _scrub_pattern


def _reference(values: set[str]) -> re.Pattern[str]:
    """The scrubber's regex as it was: every value, longest first, its %XX escapes' hex letters in either case."""
    return _alternation_pattern(values)


def test_the_trie_matches_exactly_what_the_longest_first_alternation_matches():
    rng = random.Random(20261207)
    # few characters, so values share prefixes, are prefixes of each other and escapes meet literal letters
    alphabet = "ab%AF2f1 '\"\\&<>x.*"
    for _ in range(3000):
        values: set[str] = set()
        for _ in range(rng.randint(1, 7)):
            values.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
            if rng.random() < 0.5:
                values.add(rng.choice(sorted(values)) + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))))
        ours, reference = _scrub_pattern(values), _reference(values)
        for _ in range(15):
            text = "".join(rng.choice(alphabet + "Bc%") for _ in range(rng.randint(0, 40)))
            if rng.random() < 0.6:
                value, at = rng.choice(sorted(values)), rng.randint(0, len(text))
                text = text[:at] + value + text[at:]
            assert ours.sub("#", text) == reference.sub("#", text), (values, text)


def test_a_value_is_scrubbed_whole_when_a_shorter_one_is_its_prefix_and_an_escape_in_either_case():
    s = Scrubber()
    s.add("hunter2-long")
    s.add("hunter2-long/and/longer")
    s.add("pass/word:99")
    text = ("x hunter2-long/and/longer y hunter2-long z pass%2Fword%3A99 pass%2fword%3a99 pass%2fword%3A99 "
            "pass%2Fword%3a99")
    out = s.scrub(text)
    assert out == f"x {REDACTED} y {REDACTED} z {REDACTED} {REDACTED} {REDACTED} {REDACTED}", out


def test_a_value_longer_than_the_recursion_limit_and_hundreds_of_values():
    s = Scrubber()
    pem = "".join(random.Random(1).choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                  for _ in range(sys.getrecursionlimit() * 3))
    s.add(pem)
    tokens = [f"tok-{i:04d}-{random.Random(i).getrandbits(64):016x}" for i in range(300)]
    for t in tokens:
        s.add(t)
    text = f"key {pem} end " + " ".join(tokens[::7]) + " tok-0000-nothing"
    out = s.scrub(text)
    assert pem[:40] not in out and not any(t in out for t in tokens), out[:200]
    assert out.startswith(f"key {REDACTED} end ") and out.endswith(" tok-0000-nothing")


def test_values_each_the_prefix_of_the_next_nested_deeper_than_python_recurses():
    values = {"s" * n + "!" for n in range(8, 500)} | {"s" * n for n in range(8, 500)}
    with pytest.raises(RecursionError):  # what the fallback is for
        _radix_regex(sorted(values))
    pattern = _scrub_pattern(values)
    text = "x" + "s" * 600 + "y"
    assert pattern.sub("#", text) == _reference(values).sub("#", text) == "x##y"


def test_secrets_added_one_at_a_time_between_scrubs_match_as_one_regex_of_all_of_them():
    """The scrubber holds its spellings in generations (a new secret compiles only its own) and scrubs with all of
    them at once: at each step the leftmost match of any, there the longest.  Fed in random batches, scrubbing
    between them, it must scrub exactly as one alternation of every spelling so far."""
    rng = random.Random(20261208)
    alphabet = "ab%AF2f1 'x.-"
    for _ in range(400):
        s, spellings = Scrubber(), set()
        generations = set()
        for _ in range(rng.randint(1, 12)):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 14)))
            if spellings and rng.random() < 0.4:  # a value that extends or overlaps one known
                base = rng.choice(sorted(spellings))
                value = (base + value[:rng.randint(1, 5)]) if rng.random() < 0.5 else (base[rng.randint(1, 6):] + value)
            s.add(value)
            spellings = set(s.spellings)
            reference = _reference(spellings)
            for _ in range(4):
                text = "".join(rng.choice(alphabet + "Bc") for _ in range(rng.randint(0, 30)))
                for _ in range(rng.randint(0, 3)):
                    v, at = rng.choice(sorted(spellings)), rng.randint(0, len(text))
                    text = text[:at] + v + text[at:]
                assert s.scrub(text) == reference.sub(REDACTED, text), (sorted(spellings), text)
            generations.add(len(s._gens))
        assert all(g <= 1 + len(spellings).bit_length() for g in generations)


def test_a_dozen_keys_registered_between_scrubs_compile_each_spelling_a_few_times_not_a_dozen():
    """What step 10 does: a certificate's key registered, a probe's output scrubbed, the next key."""
    import hcbpg.secrets as hsecrets
    compiled: list[int] = []
    real = hsecrets._scrub_pattern

    def counting(values):  # noqa: ANN001, ANN202
        compiled.append(len(values))
        return real(values)

    s = Scrubber()
    for i in range(30):
        s.add(f"token-{i:02d}-{random.Random(i).getrandbits(96):024x}")
    s.scrub("warm")
    hsecrets._scrub_pattern = counting
    try:
        for i in range(12):
            s.add(f"-----BEGIN PRIVATE KEY-----{random.Random(100 + i).getrandbits(900):0225x}-----END")
            assert s.scrub("probe output") == "probe output"
    finally:
        hsecrets._scrub_pattern = real
    total = len(s.spellings)
    # one regex of everything after each key would compile about 12 * total spellings
    assert sum(compiled) < 3 * total, (compiled, total)
