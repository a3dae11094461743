"""The keeper: the small process that is the parent of every task run (``python -m pymgr.keeper``).

Rules:
- Standard library only, plus ``pymgr.protocol`` (the link's messages) and
  two stdlib-only leaves shared with the daemon: ``pymgr._fsguard`` (private
  directories and files) and ``pymgr._pinpath`` (opening a checked path
  beneath its base). ``tests/keeper/test_imports.py`` pins it.
- The daemon side may import the process-handling modules here as a library
  (``spawn``, ``treekill``, ``proctree``, ``cgroup``, ``outputhold``): they
  hold the one spawner and the one tree-killer of pymgr. It never imports
  the keeper's own loop (``loop``, ``requests``, ``connection``).
"""
