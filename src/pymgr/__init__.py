"""pymgr: a privileged task daemon for web applications.

What action authors need is re-exported here; everything else is imported by
its full module path (``pymgr.client.Client``, ``pymgr.config.Config``).
"""

from pydantic import Field

from pymgr.core.identity import Identity
from pymgr.core.registry import Module, ModuleContext, Params, action, register
from pymgr.errors import (
    ActionFailed,
    Conflict,
    Forbidden,
    NotFound,
    ParamsInvalid,
    PymgrError,
    PymgrInternalError,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "ActionFailed",
    "Conflict",
    "Field",
    "Forbidden",
    "Identity",
    "Module",
    "ModuleContext",
    "NotFound",
    "Params",
    "ParamsInvalid",
    "PymgrError",
    "PymgrInternalError",
    "Unavailable",
    "__version__",
    "action",
    "register",
]
