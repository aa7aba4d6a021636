"""Unicode spellings of a username that a real slapd folds onto the user's entry.

Candidates come from the whole code space: every character whose compatibility
decomposition, casefolded and stripped of combining marks, is one of the
name's letters replaces that letter; characters that fold to nothing at all
(combining marks, format characters, ignorables) are put before and after the
name and between its letters. Known troublemakers are always included:
U+0130 (dotted capital I), U+212A (KELVIN SIGN), U+017F (long s) and the
fullwidth forms. `folded_spellings` then asks slapd which of them find the
user (one search per batch, bisected), the way `ldapauth` searches.
"""

from __future__ import annotations

import sys
import unicodedata

import ldap3
from ldap3.utils.conv import escape_filter_chars

EXTRA = "\u0130\u0131\u212a\u017f\u212b"


def _skeleton(ch: str) -> str:
    decomposed = unicodedata.normalize("NFKD", ch).casefold()
    decomposed = unicodedata.normalize("NFKD", decomposed)
    return "".join(c for c in decomposed if not unicodedata.combining(c)
                   and unicodedata.category(c) not in ("Cf", "Mn", "Me"))


def _alphabet() -> tuple[dict[str, list[str]], list[str]]:
    """Characters by the ASCII letter they fold to, and the characters that fold to nothing."""
    by_letter: dict[str, list[str]] = {}
    empty: list[str] = []
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if unicodedata.category(ch) in ("Cn", "Co", "Cs", "Cc"):
            continue
        skel = _skeleton(ch)
        if len(skel) == 1 and skel.isascii() and skel.isalpha():
            by_letter.setdefault(skel.lower(), []).append(ch)
        elif skel == "" and unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            empty.append(ch)
    return by_letter, empty


def candidates(name: str, max_ignorable: int = 400) -> list[str]:
    """Spellings of ``name`` (ASCII lower case) that a folding directory might match."""
    by_letter, empty = _alphabet()
    out: set[str] = set()
    for i, letter in enumerate(name):
        subs = set(by_letter.get(letter, ())) | {c for c in EXTRA if _skeleton(c) == letter}
        subs |= {letter.upper(), chr(ord(letter.upper()) + 0xFEE0), chr(ord(letter) + 0xFEE0)}
        for ch in subs:
            out.add(name[:i] + ch + name[i + 1:])
    for ch in empty[:max_ignorable]:
        out.update({ch + name, name + ch, name[:2] + ch + name[2:]})
    out.discard(name)
    return sorted(out)


def _found(conn, base: str, names: list[str], dn: str, attribute: str = "uid",
           suffix: str = "") -> bool:
    flt = "(|" + "".join(f"({attribute}={escape_filter_chars(n + suffix)})"
                         for n in names) + ")"
    conn.search(base, flt, search_scope=ldap3.SUBTREE, attributes=ldap3.NO_ATTRIBUTES)
    return any(e.get("dn", "").lower() == dn.lower() for e in conn.response or []
               if e.get("type") == "searchResEntry")


def folded_spellings(slapd, name: str, batch: int = 64, *, conn=None, base: str | None = None,
                     dn: str | None = None, attribute: str = "uid",
                     suffix: str = "") -> list[str]:
    """The candidates whose search finds ``name``'s entry in ``slapd`` (bisected batches).

    Another directory (the Samba AD DC): pass its service-bound ``conn``, the
    search ``base``, the entry's ``dn`` and the ``attribute`` compared (a UPN
    search appends ``suffix`` to each candidate); the connection stays open.
    """
    own = conn is None
    if own:
        dn, base = slapd.user_dn(name), slapd.people_dn
        server = ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, slapd.service_dn, slapd.service_password,
                                auto_bind=True, raise_exceptions=False)
    hits: list[str] = []

    def probe(names: list[str]) -> None:
        if not _found(conn, base, names, dn, attribute, suffix):
            return
        if len(names) == 1:
            hits.append(names[0])
            return
        half = len(names) // 2
        probe(names[:half])
        probe(names[half:])

    try:
        every = candidates(name)
        for start in range(0, len(every), batch):
            probe(every[start:start + batch])
    finally:
        if own:
            conn.unbind()
    return sorted(hits)
