"""Run the command line: `python -m p2pgate`."""

import sys

from p2pgate.cli import main

sys.exit(main())
