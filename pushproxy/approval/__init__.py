"""Approval: asking the user to approve a login, and delivering that request to their device."""
