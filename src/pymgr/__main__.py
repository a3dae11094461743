import sys

from pymgr.cli import main

sys.exit(main())
