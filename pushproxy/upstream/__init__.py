"""Upstream RADIUS as the first factor: forward, fail over, relay the reply (issue 10)."""
