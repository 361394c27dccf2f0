import sys

from p2pgate.cli import main

sys.exit(main())
