"""pymgr: a privileged task daemon for web applications.

What action authors need is re-exported here; everything else is imported by
its full module path (``pymgr.client.Client``, ``pymgr.config.Config``).

The re-exports are imported on first use (PEP 562 ``__getattr__``), so that
importing a submodule costs only that submodule: the task keeper
(``python -m pymgr.keeper``) runs on the standard library alone, and the
light install (``pip install pymgr``, without the ``daemon`` extra) imports
``pymgr``, ``pymgr.client`` and the errors. What writing a module needs
(``Module``, ``action``, ``Field``, ...) is the daemon's: in a light install
it raises ``ModuleNotFoundError`` naming ``pip install 'pymgr[daemon]'``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each re-exported name lives.
_EXPORTS = {
    "Field": "pydantic",
    "Identity": "pymgr.core.identity",
    **dict.fromkeys(["Module", "ModuleContext", "Params", "action", "register"], "pymgr.core.registry"),
    **dict.fromkeys(
        [
            "ActionFailed",
            "Conflict",
            "Forbidden",
            "NotFound",
            "ParamsInvalid",
            "PymgrError",
            "PymgrInternalError",
            "Unavailable",
        ],
        "pymgr.errors",
    ),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pymgr' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("pymgr"):
            raise
        raise ModuleNotFoundError(
            f"pymgr.{name} is for writing daemon modules and needs the daemon's dependencies "
            f"({exc.name} is missing): pip install 'pymgr[daemon]'",
            name=exc.name,
        ) from exc
    globals()[name] = value
    return value


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
