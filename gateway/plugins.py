"""Discovery of drop-in match predicates, morph actions and user identity verifiers.

A plugin is a module in a configured plugin folder (``plugins.folders``,
by default ``../plugins`` relative to the configuration file) that defines,
at module level, objects providing :class:`twisted.plugin.IPlugin` and one
of :class:`~gateway.interfaces.IMatchPredicate`,
:class:`~gateway.interfaces.IMorphAction` or
:class:`~gateway.interfaces.IUserIdentityVerifier` (the objects
:func:`twisted.plugin.getPlugins` would find).

The discovery is our own, not :func:`twisted.plugin.getPlugins`, for three
reasons (HARDENING, "Data at rest and logs"):

* only the configured folders are read. ``getPlugins`` walks
  :func:`twisted.plugin.pluginPackagePaths`, that is a ``gateway/dropins``
  folder in *every* ``sys.path`` entry, the working directory included: a
  file dropped in the folder the gateway was started from would run inside
  it. Here each module is loaded from its file's path, and
  :mod:`gateway.dropins` searches nothing else;
* a folder, or a module in it, that group or others may write is refused
  with a configuration error naming it and its mode: whoever can write
  there can run code as the gateway, which sees every instance;
* nothing is written into a plugin folder: no ``dropin.cache`` (which
  ``getPlugins`` writes beside the modules) and no ``__pycache__``.

``twisted.plugin`` also logs and skips a module that fails to import, which
would turn a typo in a plugin into a rule that silently does not exist; here
each failure is a configuration error (DESIGN 1.5).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable

from twisted.plugin import IPlugin

import gateway.dropins

#: The modules the last :func:`discover` loaded, in folder and name order.
_loaded: list[ModuleType] = []


@dataclass
class Plugins:
    """What the plugin folders provide, by name, and the errors found loading them."""

    match: dict[str, Any] = field(default_factory=dict)
    morph: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def unsafe_mode(path: str) -> str | None:
    """Why ``path`` may not hold plugins, or ``None`` when group and others cannot write it.

    :param path: a plugin folder or module.
    :returns: a sentence naming the path and its mode, or ``None``.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    kind = "folder" if os.path.isdir(path) else "module"
    return (
        f"plugin {kind} {path} is writable by group or others (mode {mode:04o}); "
        f"plugins run inside the gateway, so it must not be (chmod go-w {path})"
    )


def _load(path: str, module_name: str) -> ModuleType:
    """Import the module at ``path`` as ``module_name``, writing no bytecode beside it."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        sys.dont_write_bytecode = previous
    return module


def discover(folders: list[str]) -> Plugins:
    """Load the plugins of ``folders``, and only of them.

    :param folders: absolute folder paths; missing folders are skipped.
    :returns: the plugins by name and any errors (unsafe modes, import
        failures, duplicate names).
    """
    from gateway.interfaces import IMatchPredicate, IMorphAction, IUserIdentityVerifier

    found = Plugins()
    safe: list[str] = []
    for folder in dict.fromkeys(folders):
        if not os.path.isdir(folder):
            continue
        problem = unsafe_mode(folder)
        if problem is not None:
            found.errors.append(problem)
            continue
        safe.append(folder)
    # The package path is exactly these folders, rebuilt on every discovery
    # (a folder of an earlier configuration provides nothing after a
    # reload), so a plugin module importing a sibling through
    # gateway.dropins finds it here and nowhere else.
    gateway.dropins.__path__[:] = safe
    modules: list[ModuleType] = []
    origin: dict[str, str] = {}
    for folder in safe:
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py") or name.startswith("_"):
                continue
            path = os.path.join(folder, name)
            module_name = f"gateway.dropins.{name[:-3]}"
            if module_name in origin:
                found.errors.append(f"plugin {path}: a module of that name was loaded from {origin[module_name]}")
                continue
            origin[module_name] = path
            problem = unsafe_mode(path)
            if problem is not None:
                found.errors.append(problem)
                continue
            try:
                modules.append(_load(path, module_name))
            except Exception as e:  # any error in a plugin module is a configuration error
                found.errors.append(f"plugin {path} failed to load: {type(e).__name__}: {e}")
    _loaded[:] = modules
    tables = ((IMatchPredicate, found.match), (IMorphAction, found.morph), (IUserIdentityVerifier, found.identity))
    for interface, table in tables:
        for plugin in _providers(modules, interface):
            plugin_name = getattr(plugin, "name", None)
            if not isinstance(plugin_name, str) or not plugin_name:
                found.errors.append(f"plugin {plugin!r} has no name")
                continue
            if plugin_name in table and table[plugin_name] is not plugin:
                found.errors.append(f"two plugins are named {plugin_name!r}")
                continue
            table[plugin_name] = plugin
    return found


def _providers(modules: Iterable[ModuleType], interface: Any) -> list[Any]:
    """The module-level objects of ``modules`` that provide IPlugin and ``interface`` (as ``getPlugins``)."""
    result: list[Any] = []
    for module in modules:
        for value in vars(module).values():
            if IPlugin.providedBy(value) and interface.providedBy(value) and not any(value is r for r in result):
                result.append(value)
    return result


def providers(interface: Any) -> list[Any]:
    """The plugins providing ``interface`` among the modules the last :func:`discover` loaded.

    The replacement of ``twisted.plugin.getPlugins(interface, gateway.dropins)``.

    :param interface: a zope interface.
    :returns: the plugin objects.
    """
    return _providers(_loaded, interface)
