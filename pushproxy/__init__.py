"""pushproxy: push-MFA proxy for RADIUS and LDAP."""

__version__ = "0.1.0"
