"""Property-based fuzzing of the config loader: mutated YAML gives a Config or a ConfigError.

Mutations of ``config.example.yaml``: a value replaced with hostile YAML
(wrong types, huge numbers, anchors and aliases, deep nesting, tags), lines
deleted, duplicated or re-indented, random text spliced in. Deterministic;
``PUSHPROXY_FUZZ_EXAMPLES`` raises the number of examples.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import config_target as target
from pushproxy.config import Config, ConfigError

EXAMPLES = int(os.environ.get("PUSHPROXY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                suppress_health_check=list(HealthCheck))
LINES = target.lines()

HOSTILE = st.sampled_from([
    "", "~", "null", "true", "no", "0", "-1", "1e309", ".inf", "-.inf", ".nan", "0x7f",
    "0o777", "9" * 500, "-" + "9" * 5000, "1_000", "3.5", "[]", "{}", "[1, 2]", "{a: 1}",
    "!!binary aGk=", "!!timestamp 2001-12-14", "!!set {a, b}", "!!python/object:os.system",
    "&a [*a]", "*undefined", "'\\x00'", '"\\ud800"', '"\\u0000"', "[" * 200 + "]" * 200,
    "{" * 50 + "}" * 50, "127.0.0.1:99999", "::1:1812", "[::1]:0", "0.0.0.0/0", "300.1.1.1/8",
    "/dev/zero", "/etc/shadow", "../../etc/passwd", "secrets", "~root/x", "|\n  block",
    "ldap://", "ldaps://[::1", "https://", "javascript:alert(1)", "a" * 10000,
    "2001-12-14", "12:30", "- a\n- b", "? complex\n: key", "\t", "\u202e", "%",
])
SCALAR_TEXT = st.one_of(HOSTILE, st.text(max_size=20),
                        st.integers(-(10 ** 30), 10 ** 30).map(str),
                        st.floats().map(repr))


@st.composite
def mutated_config(draw):
    """config.example.yaml with a few line-level mutations."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(("value", "value", "value", "delete", "dup", "indent",
                                   "splice")))
        line = lines[i]
        if op == "value" and ":" in line:
            key, _, _ = line.partition(":")
            lines[i] = f"{key}: {draw(SCALAR_TEXT)}"
        elif op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 9)) + line.lstrip()
        else:
            pos = draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + draw(st.text(max_size=10)) + line[pos:]
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


def test_the_example_config_parses():
    assert isinstance(target.run_one(target.EXAMPLE), Config)


@FUZZ
@given(mutated_config())
def test_mutated_example_config_gives_config_or_config_error(text):
    target.run_one(text)


@FUZZ
@given(st.one_of(st.text(max_size=300), SCALAR_TEXT))
def test_any_text_gives_config_or_config_error(text):
    target.run_one(text)


# -- regressions: inputs the fuzzers found (each escaped parse_config before the fix)

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


@pytest.mark.parametrize("text, message", [
    ("radius: &a {x: *a}\n", "nested more than 64 levels"),  # was RecursionError
    ("radius: &a [*a]\n", "nested more than 64 levels"),
    ("radius: " + "[" * 2000 + "]" * 2000 + "\n", "nested more than 64 levels"),
    ("radius:\n  max_pending: -" + "9" * 5000 + "\n", "cannot read the value at line 2"),
    ("radius: !!python/object:os.system x\n", "cannot read the value at line 1"),
    ("radius: !!int 'abc'\n", "cannot read the value at line 1"),  # was ValueError
    ("radius: !!timestamp '2001-13-45'\n", "cannot read the value at line 1"),
    (LAUGHS, "more than 100000 values after expanding aliases"),  # was unbounded
])
def test_hostile_yaml_is_a_config_error_with_its_line(text, message):
    result = target.run_one(text)
    assert isinstance(result, ConfigError)
    assert any(message in problem for problem in result.problems), result.problems


def test_the_oracle_flags_an_exception_that_is_not_config_error(monkeypatch):
    import pushproxy.config

    monkeypatch.setattr(pushproxy.config.yamlsource, "load",
                        lambda text: (_ for _ in ()).throw(TypeError("boom")))
    with pytest.raises(target.OracleFailure, match="TypeError: boom"):
        target.run_one("radius: {}\n")


@pytest.mark.parametrize("old, new", [("  timeout: 60\n", "  timeout: .nan\n"),
                                      ("enrollment_ttl: 900", "enrollment_ttl: .nan"),
                                      ("failure_window: 300", "failure_window: .nan")])
def test_nan_is_refused_where_a_number_is_expected(old, new):
    """.nan passed every minimum/maximum check (all comparisons with NaN are false)."""
    assert old in target.EXAMPLE
    result = target.run_one(target.EXAMPLE.replace(old, new, 1))
    assert isinstance(result, ConfigError), "NaN accepted"
    assert any("not .nan" in p for p in result.problems), result.problems
