"""The package plugin modules are loaded into (``gateway.dropins.<module>``).

It searches nothing by itself: :func:`gateway.plugins.discover` loads each
module of the configured plugin folders from its file and sets this
package's ``__path__`` to exactly those folders. Unlike
:func:`twisted.plugin.pluginPackagePaths`, no ``gateway/dropins`` folder
elsewhere on ``sys.path`` (the working directory included) is searched.
"""

__path__: list[str] = []  # type: ignore[no-redef]
__all__: list[str] = []
