"""How pymgr runs as a system service: foreground, classic Unix daemon, systemd, Windows.

The daemon core (``pymgr.daemon.run``) knows nothing about service managers;
this package adapts it to each of them through ``hooks.ServiceHooks``:

- ``foreground``: ``pymgr serve`` (systemd ``Type=notify``, containers, dev),
  with sd_notify (``sdnotify``), socket activation (``activation``), SIGHUP
  reload (``reload``) and text or JSON logs (``logsetup``).
- ``unixd``: ``pymgr daemon start|stop|...``, a detached daemon (its forked
  side in ``daemonize``) with a locked pidfile (``_pidfile``), for hosts
  without systemd.
- ``systemd_units``: the text of the unit files (hardening options in ``hardening``);
  ``systemd``: those files on disk, and systemctl.
- ``winservice`` (portable) and ``windows`` (the pywin32 boundary, small).
- ``eventloop``: the one place the event loop (uvloop where installed) is chosen.
"""
