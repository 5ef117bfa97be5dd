"""The plugin namespace for drop-in match predicates and morph actions (twisted.plugin).

Modules placed in a configured plugin folder (``plugins/`` beside the
configuration by default) are found here: at load, the configuration appends
each folder to this package's ``__path__``, and
:func:`twisted.plugin.getPlugins` iterates that live path. See
:mod:`gateway.plugins`.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
