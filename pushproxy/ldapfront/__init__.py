"""The LDAP front end: push MFA in front of applications that authenticate with a simple bind.

    client (ldapsearch, sssd, a wiki) --LDAP/StartTLS/LDAPS--> pushproxy --> directory servers

Every operation is forwarded byte for byte on the client's own upstream
connection; simple binds by users are intercepted (bind upstream, read the
entry, then the engine: policy, push, timeout) and answered with the decision.

- `ber`: framing with a size limit checked on the header, and the few PDUs
  the proxy reads or writes (no general decoder, no recursion);
- `config`: the ``ldap_front:`` section;
- `binds`: which binds get a push, and the short bind cache;
- `upstream`: connections to the directory servers (failover, TLS, timeouts);
- `server`: the listener and the per-client protocol.
"""
