"""dl sample's options against the checkpoint's kind and their ranges (sample_options.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from dlcli.base.errors import UserError
from dlcli.commands.sample_options import KINDS, MAX_NEW_TOKENS, OPTIONS, check_ranges, options_for


@settings(max_examples=300, derandomize=True)
@given(kind=st.sampled_from(sorted(KINDS)), options=st.sets(st.sampled_from(sorted(OPTIONS)), max_size=4))
def test_an_option_for_another_kind_is_refused_naming_the_kinds_it_is_for(kind, options):
    given_options = {o: "x" for o in options}
    foreign = [o for o in options if kind not in OPTIONS[o][0]]
    if foreign:
        with pytest.raises(UserError) as e:
            options_for(kind, given_options)
        assert str(e.value).split(" is for ")[0] in foreign
        assert KINDS[kind] in str(e.value)
    else:
        merged = options_for(kind, given_options)
        assert all(merged[o] == "x" for o in options)


@settings(max_examples=300, derandomize=True)
@given(option=st.sampled_from(sorted(o for o, (_, rule) in OPTIONS.items() if rule)),
       value=st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True)))
def test_each_numeric_option_is_checked_on_its_own(option, value):
    rule = OPTIONS[option][1]
    if rule.problem(value):
        with pytest.raises(UserError, match=f"^{option} "):
            check_ranges({option: value})
    else:
        check_ranges({option: value})


def test_the_documented_defaults_and_cap():
    assert options_for("lm", {})["--max-new-tokens"] == 300 and options_for("seq2seq", {})["--beam"] == 1
    assert options_for("classify", {})["--num-samples"] == 10 and options_for("embedding", {})["--topn"] == 10
    with pytest.raises(UserError, match=f"--max-new-tokens {MAX_NEW_TOKENS + 1}: must be an integer in"):
        check_ranges({"--max-new-tokens": MAX_NEW_TOKENS + 1})
    with pytest.raises(UserError, match="--temperature nan: must be a number in"):
        check_ranges({"--temperature": float("nan")})
