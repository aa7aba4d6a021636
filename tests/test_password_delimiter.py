"""How a password that contains the passcode delimiter is typed (README, docs/security.md).

The rule (`passcodes.parse_password`): split at the LAST delimiter; what follows
counts only when it is exactly ``push`` (any case), 6 ASCII digits (TOTP) or 12
(10 for old codes) ASCII digits (bypass code); anything else leaves the whole text as the password.
So a password that itself ends in ``,push`` or ``,`` + 6, 10 or 12 digits must always
be typed with a suffix, e.g. ``PASSWORD,push``.
"""

from pushproxy.passcodes import Credential, Factor, parse_password


def test_a_delimiter_inside_the_password_needs_nothing_special():
    assert parse_password("a,b,c") == Credential("a,b,c", Factor.PUSH_DEFAULT)
    assert parse_password("a,b,c,123456") == Credential("a,b,c", Factor.PASSCODE, "123456")
    assert parse_password("pw,") == Credential("pw,", Factor.PUSH_DEFAULT)
    assert parse_password("pw,,push") == Credential("pw,", Factor.PUSH_FORCED)


def test_a_password_that_ends_like_a_suffix_must_be_typed_with_one():
    """``abc,123456`` alone reads as password ``abc`` + a TOTP code: type ``abc,123456,push``."""
    assert parse_password("abc,123456") == Credential("abc", Factor.PASSCODE, "123456")
    assert parse_password("abc,123456,push") == Credential("abc,123456", Factor.PUSH_FORCED)
    assert parse_password("abc,123456,654321") == Credential("abc,123456", Factor.PASSCODE,
                                                             "654321")
    assert parse_password("abc,push") == Credential("abc", Factor.PUSH_FORCED)
    assert parse_password("abc,push,push") == Credential("abc,push", Factor.PUSH_FORCED)
    assert parse_password("abc,012345678901") == Credential("abc", Factor.PASSCODE,
                                                            "012345678901")
    assert parse_password("abc,0123456789,push") == Credential("abc,0123456789",
                                                               Factor.PUSH_FORCED)
    # with suffixes turned off (passcode_delimiter: "") the text is always the password
    assert parse_password("abc,123456", "") == Credential("abc,123456", Factor.PUSH_DEFAULT)
