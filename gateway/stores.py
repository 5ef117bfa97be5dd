"""Open the queue store a configuration names: the gateway and its CLI open the same one.

``queue.backend: sqlite`` (the default) opens the journal file
``queue.path``; ``postgresql`` opens a :class:`~gateway.queue.postgres.PostgresQueueStore`
on ``queue.dsn`` with the password read from ``queue.password_file`` at load
(issue 14). Either speaks for the configuration's ``node``. A PostgreSQL store
with a node-local spool (``spool.shared: false``) leases only the instances
this node received (``local_only``): the other nodes cannot read their files.

:func:`migrate_store` is ``dicom-gateway db migrate``: it creates or updates
the schema (PostgreSQL: under an advisory lock, so two nodes starting
together do not both migrate) and returns the version now in force.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from gateway.config.schema import GatewayConfig
from gateway.queue.interfaces import IQueueStore

__all__ = ["open_store", "migrate_store", "describe_store"]


def open_store(config: GatewayConfig) -> IQueueStore:
    """The queue store of ``config``, opened (SQLite: the file is created if missing).

    :param config: the validated configuration.
    :returns: the store, speaking for ``config.node``.
    :raises Exception: the store's own error when it cannot be opened
        (:class:`~gateway.queue.interfaces.StoreUnavailable` for an unreachable PostgreSQL).
    """
    queue = config.queue
    if queue.backend == "postgresql":
        from gateway.queue.postgres import PostgresQueueStore

        store: Any = PostgresQueueStore(
            queue.dsn,
            config.node,
            password=queue.password,
            local_only=not config.spool.shared,
            pool_min=queue.pool_min,
            pool_max=queue.pool_max,
            connect_timeout=queue.connect_timeout,
            statement_timeout=queue.statement_timeout,
        )
        return store  # type: ignore[no-any-return]
    from gateway.queue.sqlite import SqliteQueueStore

    os.makedirs(os.path.dirname(config.queue_path) or ".", exist_ok=True)
    if "node" in inspect.signature(SqliteQueueStore).parameters:
        return SqliteQueueStore(config.queue_path, node=config.node)  # type: ignore[call-arg]
    # A SQLite store from before issue 14's store branch is merged: one node by definition.
    sqlite = SqliteQueueStore(config.queue_path)
    sqlite.node = config.node  # type: ignore[attr-defined]
    return sqlite


def migrate_store(config: GatewayConfig) -> int:
    """Create or update the queue schema of ``config``; return the schema version now in force.

    :param config: the validated configuration.
    :returns: the schema version.
    """
    queue = config.queue
    if queue.backend == "postgresql":
        from gateway.queue import pgschema

        version: Any = pgschema.migrate(queue.dsn, queue.password)
        return int(version)
    from gateway.queue.sqlite import SCHEMA_VERSION

    # Opening the SQLite journal migrates it (in one transaction).
    store = open_store(config)
    store.close()
    return int(SCHEMA_VERSION)


def describe_store(config: GatewayConfig) -> str:
    """Name the store for logs and ``check`` output; never the password.

    :param config: the validated configuration.
    :returns: e.g. ``sqlite /var/spool/gw/queue.sqlite`` or ``postgresql host=db1 dbname=gw``.
    """
    queue = config.queue
    if queue.backend == "postgresql":
        # The DSN carries no password (refused at load); the password file is named, not read out.
        secret = f" (password from {queue.password_file})" if queue.password_file else ""
        return f"postgresql {queue.dsn}{secret}"
    return f"sqlite {config.queue_path}"
