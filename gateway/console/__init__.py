"""The operator console: server-rendered pages under ``/console`` (issue 18).

:mod:`gateway.console.data` is what the pages read and do (:class:`~gateway.console.data.ConsoleData`,
implemented over the running gateway by :mod:`gateway.console.backend`);
the pages, sign-in, sessions and CSRF live in the modules beside it.
"""
