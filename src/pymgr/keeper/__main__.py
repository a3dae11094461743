"""``python -m pymgr.keeper --state-dir DIR``: run the keeper of a state directory (see ``pymgr.keeper.loop``)."""

import sys

from pymgr.keeper.setup import main

sys.exit(main())
