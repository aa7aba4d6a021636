"""``python -m tests.resilience``: the fault suite plus the referenced integration tests,
rendering the table into docs/resilience.md (extra arguments go to pytest)."""

import sys

import pytest

from tests.resilience.report import DOC, REFERENCED

if __name__ == "__main__":
    sys.exit(pytest.main(["-p", "no:cacheprovider", "tests/resilience", *REFERENCED,
                          "--resilience-report", str(DOC), *sys.argv[1:]]))
