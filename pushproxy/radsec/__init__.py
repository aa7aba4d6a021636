"""RadSec: RADIUS over TLS and DTLS (RFC 6614, RFC 7360, draft-ietf-radext-radiusdtls-bis)
and RADIUS/1.1 (RFC 9765).

    settings   the ``radius.radsec`` config section, typed
    identity   which configured client a verified certificate names (pure)
    framing    a TCP byte stream cut into RADIUS packets by their Length field (pure)
    listener   the TLS listener: mutual TLS, ALPN, limits, timeouts; hands each
               packet to the same RADIUS path as UDP (pushproxy.radius.server)
    dtls       RADIUS/DTLS on UDP: pyOpenSSL memory BIOs as the transport of the
               same connection protocol, with stateless cookies
    psk        TLS-PSK: the OpenSSL PSK server callback, clients by identity
"""
