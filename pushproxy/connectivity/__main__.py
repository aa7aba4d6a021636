"""``python -m pushproxy.connectivity``: the test-connection subcommand on its own."""

import sys

from pushproxy.connectivity import main

sys.exit(main())
