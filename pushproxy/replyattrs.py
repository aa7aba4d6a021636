"""Reply attributes from groups and policy rules (config ``reply_attributes:``).

Gateways put a user in a VPN group from attributes in the Access-Accept
(Filter-Id, Class, Fortinet-Group-Name, Cisco-AVPair...). Each entry maps a
directory group, a policy rule, a set of RADIUS clients, or a combination, to
attributes written as in a FreeRADIUS users file::

    reply_attributes:
      - group: "cn=vpn-admins,ou=groups,dc=example,dc=com"
        clients: [fortigate]
        attributes: ["Fortinet-Group-Name = vpn-admins"]
      - rule: contractors
        attributes: ["Filter-Id = contractors", "Class = contractor"]

Every entry whose conditions all hold adds its attributes, in file order. They
go into Accepts only; a denied login never carries them. Names come from
pushproxy's dictionary; an unknown name is a config error.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.radius.attributes import Attr, AttributeError_, Names


@dataclass(frozen=True)
class ReplyEntry:
    """One mapping; a condition that is None matches every login."""

    attributes: tuple[Attr, ...]
    group: str | None = None  # normalized DN
    rule: str | None = None
    clients: frozenset[str] | None = None


@dataclass(frozen=True)
class ReplyMap:
    """The validated ``reply_attributes`` list."""

    entries: tuple[ReplyEntry, ...] = ()

    @property
    def groups(self) -> frozenset[str]:
        """Every group an entry names: the directory must tell whether the user is in it."""
        return frozenset(e.group for e in self.entries if e.group)

    def attributes_for(self, *, groups, rule: str | None, client: str) -> tuple[Attr, ...]:
        """The attributes of every matching entry, in order."""
        from pushproxy.ldapnames import normalize_dn

        have = {normalize_dn(g) for g in groups or ()}
        out: list[Attr] = []
        for entry in self.entries:
            if entry.group is not None and entry.group not in have:
                continue
            if entry.rule is not None and entry.rule != rule:
                continue
            if entry.clients is not None and client not in entry.clients:
                continue
            out.extend(entry.attributes)
        return tuple(out)


def parse_attribute_list(c, value, path: str, names: Names) -> tuple[Attr, ...]:
    """A list of ``"Name = value"`` strings, each checked against the dictionary."""
    if not isinstance(value, list) or not value:
        c.problem(path, "must be a non-empty list of \"Attribute-Name = value\" strings")
        return ()
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            c.problem(f"{path}[{i}]", "must be a string like \"Filter-Id = vpn-users\"")
            continue
        try:
            out.append(names.parse(item))
        except AttributeError_ as exc:
            c.problem(f"{path}[{i}]", str(exc))
    return tuple(out)


def parse_reply_attributes(c, value, path: str, *, names: Names, rule_names,
                           client_names) -> ReplyMap | None:
    """Validate the ``reply_attributes`` list (``rule_names``/``client_names``: None = unknown)."""
    from pushproxy.ldapnames import normalize_dn

    if value is None:
        return None
    if not isinstance(value, list):
        c.problem(path, "must be a list of {group/rule/clients, attributes} entries")
        return None
    entries = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        m = c.mapping(item, where, required=("attributes",),
                      optional=("group", "rule", "clients"))
        if m is None:
            continue
        group = c.string(m, "group", f"{where}.group", required=False)
        rule = c.string(m, "rule", f"{where}.rule", required=False)
        if rule is not None and rule_names is not None and rule not in rule_names:
            c.problem(f"{where}.rule", f"no policy rule is called {rule!r}")
        clients = None
        if "clients" in m:
            raw = c.seq(m, "clients", f"{where}.clients", [], min_len=1)
            clients = frozenset(x for x in raw if isinstance(x, str))
            if len(clients) != len(raw):
                c.problem(f"{where}.clients", "must be a list of client names")
            unknown = sorted(clients - set(client_names or clients))
            if unknown:
                c.problem(f"{where}.clients", f"unknown RADIUS client(s): {', '.join(unknown)}")
        attrs = parse_attribute_list(c, m.get("attributes"), f"{where}.attributes", names)
        entries.append(ReplyEntry(attributes=attrs, group=normalize_dn(group) if group else None,
                                  rule=rule, clients=clients))
    return ReplyMap(tuple(entries))
