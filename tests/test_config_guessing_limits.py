"""push.passcode_limits and push.password_limits: defaults, values, every problem with its path."""

from pushproxy.passcode_limits import PasscodeLimits
from pushproxy.password_throttle import PasswordLimits
from tests.test_config import ENV, GOOD, parse, problems


def test_defaults_when_absent(tmp_path):
    cfg = parse(GOOD, tmp_path, ENV)
    assert cfg.push.passcode_limits == PasscodeLimits()
    assert cfg.push.password_limits == PasswordLimits()
    assert (cfg.push.passcode_limits.max_failures, cfg.push.passcode_limits.lock_after) == (5, 10)


def test_values_are_read(tmp_path):
    cfg = parse(GOOD + """\
push:
  passcode_limits: {max_failures: 3, window: 60, pause: 120, lock_after: 6,
                    lock_window: 3600, source_max_failures: 9}
  password_limits: {max_failures: 0, window: 30, pause: 10}
""", tmp_path, ENV)
    assert cfg.push.passcode_limits == PasscodeLimits(3, 60, 120, 6, 3600, 9)
    assert cfg.push.password_limits == PasswordLimits(max_failures=0, window=30, pause=10)


def test_every_problem_is_reported_with_its_path(tmp_path):
    found = problems(GOOD + """\
push:
  passcode_limits: {max_failures: 5, lock_after: 5, window: 0, lock_window: 10, typo: 1}
  password_limits: {max_failures: -1, pause: nope}
""", tmp_path, ENV)
    text = "\n".join(found)
    for path in ("push.passcode_limits.lock_after", "push.passcode_limits.window",
                 "push.passcode_limits", "push.password_limits.max_failures",
                 "push.password_limits.pause"):
        assert path in text, text
    assert "typo" in text
