"""Discovery of drop-in match predicates and morph actions.

Plugins are Twisted plugins: a module in a plugin folder defines objects
providing :class:`~gateway.interfaces.IMatchPredicate` or
:class:`~gateway.interfaces.IMorphAction` at module level, and
:func:`twisted.plugin.getPlugins` finds them through the
:mod:`gateway.dropins` package.

``twisted.plugin`` logs and skips a module that fails to import, which would
turn a typo in a plugin into a rule that silently does not exist. So
:func:`discover` imports every module of the folders itself first and reports
each failure as a configuration error (DESIGN 1.5: a plugin that fails to
load is a config error). It also tolerates a read-only folder: twisted.plugin
then cannot write its ``dropin.cache`` and recomputes it, which is fine.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.plugin import getPlugins

import gateway.dropins

#: The drop-in package's own path (installed plugin paths), before any folder is added.
_BASE_PATH: tuple[str, ...] = tuple(gateway.dropins.__path__)


@dataclass
class Plugins:
    """What the plugin folders provide, by name, and the errors found loading them."""

    match: dict[str, Any] = field(default_factory=dict)
    morph: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def discover(folders: list[str]) -> Plugins:
    """Load the plugins of ``folders`` (plus any installed in :mod:`gateway.dropins`).

    :param folders: absolute folder paths; missing folders are skipped.
    :returns: the plugins by name and any errors (import failures, duplicate names).
    """
    from gateway.interfaces import IMatchPredicate, IMorphAction, IUserIdentityVerifier

    found = Plugins()
    # The package path is rebuilt on every discovery: the installed drop-in
    # paths plus exactly these folders. Appending only would keep the
    # folders of an earlier configuration (before a SIGHUP, or another
    # configuration in the same process), whose plugins and broken modules
    # would then still be found.
    gateway.dropins.__path__[:] = [*_BASE_PATH, *(f for f in dict.fromkeys(folders) if os.path.isdir(f))]
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py") or name.startswith("_"):
                continue
            module = f"gateway.dropins.{name[:-3]}"
            try:
                if module in sys.modules:
                    importlib.reload(sys.modules[module])
                else:
                    importlib.import_module(module)
            except Exception as e:  # any error in a plugin module is a configuration error
                found.errors.append(f"plugin {os.path.join(folder, name)} failed to load: {type(e).__name__}: {e}")
    for interface, table in (
        (IMatchPredicate, found.match),
        (IMorphAction, found.morph),
        (IUserIdentityVerifier, found.identity),
    ):
        for plugin in getPlugins(interface, gateway.dropins):
            plugin_name = getattr(plugin, "name", None)
            if not isinstance(plugin_name, str) or not plugin_name:
                found.errors.append(f"plugin {plugin!r} has no name")
                continue
            if plugin_name in table and table[plugin_name] is not plugin:
                found.errors.append(f"two plugins are named {plugin_name!r}")
                continue
            table[plugin_name] = plugin
    return found
