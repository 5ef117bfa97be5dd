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

import os

from gateway.config.schema import GatewayConfig
from gateway.queue.interfaces import IQueueStore

__all__ = ["open_store", "migrate_store", "describe_store", "stranded_after", "STRANDED_LEASES"]

#: A node-local spool's node silent for this many leases strands its backlog
#: (``queue list``'s STRANDED column, ``gateway_queue_stranded``): 120 s with the defaults.
STRANDED_LEASES = 6


def stranded_after(config: GatewayConfig) -> float | None:
    """Seconds of silence after which a node's queued entries are stranded, or ``None`` where nothing can strand.

    Only with node-local spools on a shared queue (PostgreSQL, ``spool.shared: false``)
    does an entry wait for one node; on a shared spool any node sends it,
    and SQLite is one node's.

    :param config: the validated configuration.
    """
    if config.queue.backend == "postgresql" and not config.spool.shared:
        return STRANDED_LEASES * config.cluster.lease
    return None


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

        return PostgresQueueStore(
            queue.dsn,
            config.node,
            password=queue.password or None,
            local_only=not config.spool.shared,
            pool_min=queue.pool_min,
            pool_max=queue.pool_max,
            connect_timeout=queue.connect_timeout,
            statement_timeout=queue.statement_timeout,
        )
    from gateway.queue.sqlite import SqliteQueueStore

    os.makedirs(os.path.dirname(config.queue_path) or ".", exist_ok=True)
    return SqliteQueueStore(config.queue_path, node=config.node)


def migrate_store(config: GatewayConfig) -> tuple[int, int]:
    """Create or update the queue schema of ``config`` (``dicom-gateway db migrate``).

    PostgreSQL: under the migration advisory lock, so two nodes (or a node and
    this command) never both migrate; SQLite: opening the journal migrates it
    in one transaction.

    :param config: the validated configuration.
    :returns: ``(schema version now in force, migrations this call applied)``.
    :raises Exception: the store's error (:class:`~gateway.queue.interfaces.StoreUnavailable`,
        ``SchemaError`` for a database newer than this code).
    """
    queue = config.queue
    if queue.backend == "postgresql":
        from gateway.queue import pgschema
        from gateway.queue.postgres import migrate_database

        applied = migrate_database(queue.dsn, queue.password or None, config.node, queue.connect_timeout)
        return pgschema.SCHEMA_VERSION, applied
    from gateway.queue.schema import SCHEMA_VERSION

    before = _sqlite_version(config.queue_path)
    store = open_store(config)
    store.close()
    return SCHEMA_VERSION, SCHEMA_VERSION - before


def _sqlite_version(path: str) -> int:
    """The schema version of a SQLite journal (``PRAGMA user_version``), 0 when there is no file yet."""
    import sqlite3

    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


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
