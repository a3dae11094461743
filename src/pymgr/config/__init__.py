"""The daemon's configuration: pydantic models that hold data only.

Adding a setting means adding one field to the model of its table (with its
default and its reason); nothing else parses the file. Relative paths in a
config file are made absolute against the directory of that file, so a daemon
started from any working directory (systemd starts it in /) reads the same
paths. They are joined, never resolved: resolving would follow a link planted
on the way before ``O_NOFOLLOW`` or a trust check could see it. The file
itself must be one only root or the daemon's user can change (``_configtrust``).

One module per concern: ``listeners`` (``[http]``, ``[legacy]``), ``tasks``
(``[tasks]``), ``service`` (``[service]``), ``fleet`` (``[fleet]``), ``file`` (the root model, the
small tables and ``load_config``). The tables of other concerns live beside
their code: ``auth.settings``, ``auth.policy``, ``modules.commandspec``,
``core.paramspec``. Import every name from ``pymgr.config``.
"""

from pymgr.config.file import Config, ConfigError, ModulesConfig, SecurityConfig, load_config
from pymgr.config.fleet import FleetConfig, FleetKeyConfig
from pymgr.config.listeners import HttpConfig, LegacyConfig
from pymgr.config.service import ServiceConfig
from pymgr.config.tasks import CgroupConfig, Rlimit, RlimitsConfig, TasksConfig, TaskTypeConfig

__all__ = [
    "CgroupConfig",
    "Config",
    "ConfigError",
    "FleetConfig",
    "FleetKeyConfig",
    "HttpConfig",
    "LegacyConfig",
    "ModulesConfig",
    "Rlimit",
    "RlimitsConfig",
    "SecurityConfig",
    "ServiceConfig",
    "TaskTypeConfig",
    "TasksConfig",
    "load_config",
]
