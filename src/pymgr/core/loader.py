"""Finding module classes named in the config.

An entry of ``[modules] enabled`` is one of:
- an entry-point name in the ``pymgr.modules`` group (``"demo"``);
- ``"package.file:Class"``, a class imported by path;
- ``"package.file"``, every class in that file decorated with ``@register``;
- ``"*"``, every entry point of the group.

The names of modules from code are reserved (``reserved_module_names``):
a command from the config may not take one, enabled or not, so it can
never pass for a module it is not (``tasks`` above all).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pymgr.core.registry import Module, RegistryError, registered_in

ENTRY_POINT_GROUP = "pymgr.modules"

#: The modules pymgr itself provides (its entry points in pyproject.toml),
#: reserved even where the package's metadata is missing.
BUILTIN_MODULE_NAMES = frozenset({"demo", "metrics", "SCAN_MODULE", "tasks"})
#: The modules every daemon serves without an entry point (``daemon.build_registry``).
DAEMON_MODULE_NAMES = frozenset({"audit"})


def reserved_module_names() -> frozenset[str]:
    """Names only a module from code may have: pymgr's own, the daemon's and every installed entry point's.

    Reads the entry points' names only: nothing is imported.
    """
    return (
        BUILTIN_MODULE_NAMES | DAEMON_MODULE_NAMES | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    )


def _check(cls: object, source: str) -> type[Module]:
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise RegistryError(f"{source} is {cls!r}, not a pymgr.Module subclass")
    return cls


def _import(path: str) -> list[type[Module]]:
    module_path, _, attr = path.partition(":")
    try:
        pymod = importlib.import_module(module_path)
    except ImportError as exc:
        raise RegistryError(f"cannot import module {module_path!r} (from [modules] enabled): {exc}") from exc
    if attr:
        if not hasattr(pymod, attr):
            raise RegistryError(f"{module_path!r} has no attribute {attr!r} (from [modules] enabled)")
        return [_check(getattr(pymod, attr), path)]
    classes = registered_in(pymod.__name__)
    if not classes:
        raise RegistryError(f"{module_path!r} defines no @pymgr.register-ed module classes")
    return classes


def module_classes(enabled: list[str]) -> list[type[Module]]:
    """The module classes the config enables, in order, each once.

    Raises:
        RegistryError: an unknown entry-point name or a bad import path.
    """
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    classes: list[type[Module]] = []
    for entry in enabled:
        if entry == "*":
            found = [_check(ep.load(), f"entry point {ep.name!r}") for ep in eps.values()]
        elif entry in eps:
            found = [_check(eps[entry].load(), f"entry point {entry!r}")]
        elif "." in entry or ":" in entry:
            found = _import(entry)
        else:
            raise RegistryError(
                f"no module entry point named {entry!r}; installed: {', '.join(sorted(eps)) or '(none)'}"
            )
        classes.extend(cls for cls in found if cls not in classes)
    return classes
