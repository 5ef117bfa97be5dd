"""The ``dicom-gateway`` command line.

Subcommands:

* ``run -c CONFIG``: run the gateway in the foreground, logging to stdout,
  until SIGTERM or SIGINT (a clean stop: listeners close, open associations
  are aborted, partial instances discarded).
* ``check -c CONFIG``: validate a configuration and exit 0 (valid) or 1.
* ``echo DEST -c CONFIG`` or ``echo HOST PORT``: send a C-ECHO to a
  configured destination or to any AE (a Verification SCU).
* ``store HOST PORT FILE...``: send Part 10 files to an AE with C-STORE over one association.
* ``queue list|show|retry|purge|pause|resume|nodes -c CONFIG``: inspect and act on
  the forwarding queue and its dead letters (works while the gateway runs);
  each action is written to the audit trail with the local OS user. The
  queue is the one the gateway uses (SQLite or PostgreSQL); ``list`` adds
  the stranded entries of absent nodes and the table of nodes, ``nodes``
  shows that table alone.
* ``db migrate -c CONFIG``: create or update the queue's schema (PostgreSQL:
  under an advisory lock; SQLite: the journal file) and print its version.
* ``api METHOD PATH -c CONFIG [--data JSON]`` and ``reload -c CONFIG``: call
  the running gateway's admin API with its token (``http.token``,
  ``http.token_file``, or the one generated in the spool at first start).
* ``drain -c CONFIG`` and ``undrain -c CONFIG``: take this node out of the
  load balancer's rotation and back (issue 14, :mod:`gateway.drain`), through the admin API.
* ``find -c CONFIG --study UID`` (or ``--accession``, ``--patient-id``,
  ``--sop-instance``): where did each instance go.
* ``replay -c CONFIG --study UID --to DEST``: send a kept study again.
* ``audit verify FILE...``: check the audit files' hash chain.
* ``tls init DIR``: a development CA, gateway and client certificate (see ``tls/README.md``).

The command is thin: it parses arguments, builds objects and runs them under
:func:`twisted.internet.task.react`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner

from gateway import __version__
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-gateway", description="A DICOM routing gateway.")
    parser.add_argument("--version", action="version", version=f"dicom-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, help="the gateway configuration (YAML)")
    run.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warn", "error"], help="overrides log.level"
    )

    check = sub.add_parser(
        "check", help="validate a configuration; with files, show what the routes would do with them"
    )
    check.add_argument("-c", "--config", required=True, help="the gateway configuration (YAML)")
    check.add_argument("files", nargs="*", help="DICOM files (or folders) to route as the gateway would")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--calling-ae", default="", help="the calling AE title of the association")
    check.add_argument("--called-ae", default="", help="the called AE title (default: ours)")
    check.add_argument("--source-ip", default="127.0.0.1", help="the peer's IP address")
    check.add_argument("--listener", default="", help="the listener's name (default: the first)")

    for name, help_text in (("echo", "send a C-ECHO to an AE"), ("store", "send DICOM files to an AE")):
        scu = sub.add_parser(name, help=help_text)
        if name == "echo":
            scu.add_argument("host", help="a configured destination's name (with -c), or a host name")
            scu.add_argument("port", type=int, nargs="?", help="the port, when HOST is a host")
            scu.add_argument("-c", "--config", help="the gateway configuration, to echo a destination by name")
        else:
            scu.add_argument("host")
            scu.add_argument("port", type=int)
        scu.add_argument("--aet", default="DICOMGW", help="our (calling) AE title")
        scu.add_argument("--aec", default="ANY-SCP", help="the called AE title")
        scu.add_argument("--max-pdu", type=int, default=262144, help="our maximum PDU length")
        scu.add_argument("--timeout", type=float, default=30.0, help="ACSE and DIMSE timeout, seconds")
        if name == "store":
            scu.add_argument("files", nargs="+", help="Part 10 files to send")
    config_arg = argparse.ArgumentParser(add_help=False)
    config_arg.add_argument("-c", "--config", required=True, help="the gateway configuration (YAML)")
    queue = sub.add_parser("queue", help="inspect and act on the forwarding queue")
    qsub = queue.add_subparsers(dest="action", required=True)
    qlist = qsub.add_parser(
        "list", parents=[config_arg], help="per destination: queued, in flight, dead letters, oldest age, last error"
    )
    qlist.add_argument("--json", action="store_true")
    qlist.add_argument("--dead", action="store_true", help="list the dead letters instead")
    qlist.add_argument("--destination", help="only this destination (with --dead)")
    qshow = qsub.add_parser("show", parents=[config_arg], help="one entry with its attempt history")
    qshow.add_argument("entry_id", type=int)
    qshow.add_argument("--json", action="store_true")
    qretry = qsub.add_parser("retry", parents=[config_arg], help="send dead letters again (to the tail of the queue)")
    qretry.add_argument("entry_ids", type=int, nargs="*")
    qretry.add_argument("--all", action="store_true", help="every dead letter (of --destination, if given)")
    qretry.add_argument("--destination", help="with --all: only this destination's dead letters")
    qretry.add_argument("--to", help="re-target to another configured destination")
    qretry.add_argument(
        "--force", action="store_true", help="with --to: re-target even when no route sends copies with the entry's plan there"
    )
    qretry.add_argument(
        "--commitment",
        metavar="TRANSACTION_UID",
        action="append",
        default=[],
        help="a dead Storage Commitment report to send again (as `commitment retry`; repeatable)",
    )
    qpurge = qsub.add_parser("purge", parents=[config_arg], help="delete dead letters for good")
    qpurge.add_argument("entry_ids", type=int, nargs="+")
    for action in ("pause", "resume"):
        qp = qsub.add_parser(action, parents=[config_arg], help=f"{action} a destination (items keep queueing)")
        qp.add_argument("destination")
    qnodes = qsub.add_parser(
        "nodes", parents=[config_arg], help="the nodes sharing the queue: last heartbeat, leases and slots held"
    )
    qnodes.add_argument("--json", action="store_true")

    commitment = sub.add_parser(
        "commitment", help="Storage Commitment transactions: the reports owed to modalities, sent, or given up"
    )
    csub = commitment.add_subparsers(dest="commitment_action", required=True)
    clist = csub.add_parser("list", parents=[config_arg], help="transactions, newest first: state, policy, report, attempts")
    clist.add_argument("--state", choices=["open", "reported", "dead"], help="only transactions in this state")
    clist.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    clist.add_argument("--json", action="store_true")
    cshow = csub.add_parser(
        "show", parents=[config_arg], help="one transaction: request, each instance per destination, the report, attempts"
    )
    cshow.add_argument("transaction_uid")
    cshow.add_argument("--json", action="store_true")
    cretry = csub.add_parser("retry", parents=[config_arg], help="send a dead report again (the same report)")
    cretry.add_argument("transaction_uid")

    # Issue 16: C-MOVE / C-GET retrieves in the journal (finished ones kept retention.retrieves).
    retrieve = sub.add_parser("retrieve", help="C-MOVE and C-GET retrieves: open, and finished within retention.retrieves")
    rsub = retrieve.add_subparsers(dest="retrieve_action", required=True)
    rlist = rsub.add_parser("list", parents=[config_arg], help="retrieves, newest first: kind, state, requester, counts")
    rlist.add_argument("--state", choices=["open", "done", "cancelled", "failed"], help="only retrieves in this state")
    rlist.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    rlist.add_argument("--json", action="store_true")
    rshow = rsub.add_parser("show", parents=[config_arg], help="one retrieve: request, counts, each instance")
    rshow.add_argument("retrieve_id", type=int)
    rshow.add_argument("--json", action="store_true")

    # Issue 18 (notify): the studies journal (completeness for notifications).
    studies = sub.add_parser("studies", parents=[config_arg], help="studies of notifying routes: open and complete")
    studies.add_argument("--state", choices=["open", "complete"], help="only studies in this state")
    studies.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    studies.add_argument("--json", action="store_true")

    db = sub.add_parser("db", help="the queue's database")
    db_sub = db.add_subparsers(dest="db_action", required=True)
    db_sub.add_parser(
        "migrate", parents=[config_arg], help="create or update the queue schema (PostgreSQL: under an advisory lock) and print its version"
    )

    api = sub.add_parser("api", parents=[config_arg], help="call the running gateway's admin API with its token")
    api.add_argument("method", choices=["GET", "POST", "DELETE"], type=str.upper)
    api.add_argument("path", help="e.g. /api/v1/queues")
    api.add_argument("--data", default=None, help="a JSON body (sent as application/json)")
    api.add_argument("--token-name", default="", help="which token of http.token_file to use (default: the first)")
    api.add_argument("--ca", default="", help="with http.tls: the CA file to verify the gateway with (default: its own certificate)")
    reload = sub.add_parser("reload", parents=[config_arg], help="ask the running gateway to reload its configuration (as SIGHUP)")
    reload.add_argument("--token-name", default="", help="which token of http.token_file to use (default: the first)")
    reload.add_argument("--ca", default="", help="with http.tls: the CA file to verify the gateway with")

    for action, help_text in (
        ("drain", "make /readyz fail now, then reject new associations after drain.grace while open ones finish"),
        ("undrain", "end a drain: ready again, new associations accepted"),
    ):
        drain = sub.add_parser(action, parents=[config_arg], help=help_text)
        drain.add_argument("--token-name", default="", help="which token of http.token_file to use (default: the first)")
        drain.add_argument("--ca", default="", help="with http.tls: the CA file to verify the gateway with")
    find = sub.add_parser("find", help="where did an instance go")
    find.add_argument("-c", "--config", required=True)
    find.add_argument("--study")
    find.add_argument("--sop-instance")
    find.add_argument("--patient-id")
    find.add_argument("--accession")
    find.add_argument("--json", action="store_true")

    replay = sub.add_parser("replay", help="send a kept study again to a destination")
    replay.add_argument("-c", "--config", required=True)
    replay.add_argument("--study", required=True)
    replay.add_argument("--to", required=True, dest="to")
    replay.add_argument(
        "--force", action="store_true", help="replay even when no route sends instances unmorphed to the destination"
    )

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain of audit files; report the first broken link")
    verify.add_argument("files", nargs="+", help="audit files (rotated ones too; checked oldest first)")

    # Issue 17: a STOW-RS client's token, and its line for dicomweb.auth.tokens_file.
    dwt = sub.add_parser(
        "dicomweb-token", help="print a new random STOW-RS client token and its hashed line for dicomweb.auth.tokens_file"
    )
    dwt.add_argument("name", help="the client's name (1-64 of A-Z a-z 0-9 . _ @ -)")
    # Issue 18: a console user's line for console.users_file.
    cu = sub.add_parser(
        "console-user",
        help="make a console user's line (password from stdin) for console.users_file, or put it in --file",
    )
    cu.add_argument("name", help="the user's name (1-64 of A-Z a-z 0-9 . _ @ -)")
    cu.add_argument("--role", required=True, choices=("viewer", "operator", "admin"), help="viewer reads; operator also retries, purges, pauses; admin also reloads")
    cu.add_argument("--show-phi", action="store_true", help="show Patient names and IDs unmasked on list pages")
    cu.add_argument("--file", default="", help="replace or add the user's line in this file (mode 0600) instead of printing it")
    tls = sub.add_parser("tls", help="TLS material for development and tests")
    tls_sub = tls.add_subparsers(dest="tls_action", required=True)
    tls_init = tls_sub.add_parser("init", help="create a development CA, gateway and client certificate")
    tls_init.add_argument("directory")
    tls_init.add_argument("--name", action="append", default=[], help="a DNS name or IP of the gateway (repeatable)")
    tls_init.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def _open_store(config: Any) -> Any:
    """Open the gateway's journal, the same store type the gateway opens; before the gateway's first run it is created empty."""
    from gateway.stores import describe_store, open_store

    try:
        return open_store(config)
    except Exception as e:
        # describe_store never shows the password (the DSN carries none).
        print(f"cannot open the queue journal ({describe_store(config)}): {e}", file=sys.stderr)
        raise SystemExit(1)


def _db(args: argparse.Namespace) -> int:
    """``dicom-gateway db migrate``: create or update the queue schema; print the version in force."""
    from gateway.stores import describe_store, migrate_store

    config = _load_or_exit(args.config)
    try:
        version, applied = migrate_store(config)
    except Exception as e:
        # The store's errors never carry the password (PostgresQueueStore scrubs them).
        print(f"cannot migrate the queue ({describe_store(config)}): {e}", file=sys.stderr)
        return 1
    print(f"queue schema version {version} ({describe_store(config)}; {applied} migration(s) applied)")
    return 0


def _known_destination(config: Any, name: str) -> None:
    names = [d.name for d in config.destinations]
    if name not in names:
        print(f"unknown destination {name!r}; configured: {', '.join(names) or '(none)'}", file=sys.stderr)
        raise SystemExit(2)


def _queue(args: argparse.Namespace) -> int:
    """``dicom-gateway queue ...``: operate on the journal directly; actions are audited."""
    import time

    from gateway import admin
    from gateway.audit import Outcome
    from gateway.queue.interfaces import EntryState

    if args.action == "retry" and args.commitment:
        # Dead Storage Commitment reports are dead letters of their own kind (issue 15):
        # `queue retry --commitment UID` replays them as `commitment retry UID` does.
        if args.entry_ids or args.all or args.to:
            print("--commitment takes no entry ids, --all or --to", file=sys.stderr)
            return 2
        worst = 0
        for uid in args.commitment:
            one = argparse.Namespace(config=args.config, commitment_action="retry", transaction_uid=uid)
            worst = max(worst, _commitment(one))
        return worst
    config = _load_or_exit(args.config)
    store = _open_store(config)
    now = time.time()
    operator = admin.local_operator()

    def audit(action: str, **details: Any) -> None:
        # The journal is written here, not by the gateway: so is the audit record (issue 11).
        trail = admin.cli_audit_trail(config)
        try:
            admin.audit_operator_action(trail, action, operator, **details)
        finally:
            admin.close_audit_trail(trail)

    try:
        if args.action == "list":
            if args.dead:
                entries = store.entries(destination=args.destination, state=EntryState.DEAD)
                if args.json:
                    print(admin.to_json([admin.entry_dict(e) for e in entries]))
                else:
                    for e in entries:
                        print(f"{e.entry_id:>8}  {e.destination:<16} {e.instance.sop_instance_uid}  {e.dead_reason}")
                    print(f"{len(entries)} dead letter(s)")
                return 0
            from gateway.stores import stranded_after

            rows = admin.queue_rows(store, [d.name for d in config.destinations], now, stranded_after(config))
            if args.json:
                print(admin.to_json(rows))
                return 0
            print(admin.format_queue_rows(rows, now))
            journal = admin.commitment_journal(store)
            if journal is not None:
                # Issue 15: a line only when Storage Commitment reports are owed or dead.
                line = admin.format_commitment_summary(admin.commitment_summary(journal, now))
                if line:
                    print()
                    print(line)
            nodes = admin.format_node_rows(admin.node_rows(store, now, config.cluster.heartbeat), now)
            if nodes:
                print()
                print(nodes)
            return 0
        if args.action == "nodes":
            node_rows = admin.node_rows(store, now, config.cluster.heartbeat)
            if args.json:
                print(admin.to_json(node_rows))
            else:
                print(admin.format_node_rows(node_rows, now) or "no node has sent a heartbeat yet")
            return 0
        if args.action == "show":
            try:
                entry = store.get(args.entry_id)
            except KeyError:
                print(f"no entry {args.entry_id}", file=sys.stderr)
                return 1
            print(admin.to_json(admin.entry_dict(entry)) if args.json else admin.format_entry(entry))
            return 0
        if args.action == "retry":
            action = "retarget" if args.to else "retry"
            if args.to and args.to not in [d.name for d in config.destinations]:
                audit(action, entry_ids=list(args.entry_ids), to=args.to, outcome=Outcome.MINOR_FAILURE,
                      description=f"{action} refused: unknown destination {args.to!r}")
                _known_destination(config, args.to)
            ids = list(args.entry_ids)
            if args.all:
                ids += [e.entry_id for e in store.entries(destination=args.destination, state=EntryState.DEAD, limit=10**9)]
            if not ids:
                print("nothing to retry: give entry ids or --all", file=sys.stderr)
                return 1
            done: list[int] = []
            failed: list[int] = []
            refused: list[int] = []
            forced: list[int] = []
            for entry_id in ids:
                if args.to:
                    from gateway.prepare import kind_refusal, retarget_refusal

                    try:
                        entry = store.get(entry_id)
                    except KeyError:
                        entry = None  # reported as "not a dead letter" below
                    wrong_kind = kind_refusal(config.destinations, entry.instance.sop_class_uid, args.to) if entry else None
                    if wrong_kind:
                        print(f"entry {entry_id}: not re-targeted to {args.to}: {wrong_kind}", file=sys.stderr)
                        refused.append(entry_id)
                        continue
                    refusal = retarget_refusal(config.routes, entry.plan_hash, args.to) if entry else None
                    if refusal and not args.force:
                        print(f"entry {entry_id}: not re-targeted to {args.to}: {refusal}", file=sys.stderr)
                        refused.append(entry_id)
                        continue
                    if refusal:
                        forced.append(entry_id)
                try:
                    new_id = store.requeue_dead(entry_id, now, destination=args.to)
                except KeyError:
                    print(f"entry {entry_id}: not a dead letter", file=sys.stderr)
                    failed.append(entry_id)
                    continue
                done.append(entry_id)
                print(f"entry {entry_id}: queued again as {new_id}" + (f" for {args.to}" if args.to else ""))
            plain = [i for i in done if i not in forced]
            if plain:
                audit(action, entry_ids=plain, to=args.to or "")
            if forced := [i for i in done if i in forced]:
                audit(action, entry_ids=forced, to=args.to or "",
                      description=f"{action} to {args.to} forced past the re-target guard (--force)")
            if refused:
                audit(action, entry_ids=refused, to=args.to or "", outcome=Outcome.MINOR_FAILURE,
                      description=f"{action} refused: no route sends copies with these entries' plan to {args.to}")
            if failed:
                audit(action, entry_ids=failed, to=args.to or "", outcome=Outcome.MINOR_FAILURE,
                      description=f"{action} refused: not dead letters")
            return 1 if failed or refused else 0
        if args.action == "purge":
            purged: list[int] = []
            missing: list[int] = []
            for entry_id in args.entry_ids:
                try:
                    store.purge(entry_id)
                    purged.append(entry_id)
                    print(f"entry {entry_id}: purged")
                except KeyError:
                    print(f"entry {entry_id}: not a dead letter", file=sys.stderr)
                    missing.append(entry_id)
            if purged:
                audit("purge", entry_ids=purged)
            if missing:
                audit("purge", entry_ids=missing, outcome=Outcome.MINOR_FAILURE, description="purge refused: not dead letters")
            return 1 if missing else 0
        if args.action in ("pause", "resume"):
            if args.destination not in [d.name for d in config.destinations]:
                audit(args.action, destination=args.destination, outcome=Outcome.MINOR_FAILURE,
                      description=f"{args.action} refused: unknown destination")
            _known_destination(config, args.destination)
            store.set_paused(args.destination, args.action == "pause")
            audit(args.action, destination=args.destination)
            print(f"{args.destination}: {'paused' if args.action == 'pause' else 'resumed'}")
            return 0
    finally:
        store.close()
    return 2


def _commitment(args: argparse.Namespace) -> int:
    """``dicom-gateway commitment list|show|retry``: read the Storage Commitment journal directly; retry is audited."""
    import time

    from gateway import admin
    from gateway.audit import Outcome
    from gateway.config.schema import DicomDestination
    from gateway.queue.commitments import TransactionState
    from gateway.stores import describe_store

    config = _load_or_exit(args.config)
    store = _open_store(config)
    now = time.time()
    try:
        journal = admin.commitment_journal(store)
        if journal is None:
            print(f"the queue journal ({describe_store(config)}) keeps no Storage Commitment transactions", file=sys.stderr)
            return 1
        if args.commitment_action == "list":
            state = TransactionState(args.state) if args.state else None
            rows = admin.commitment_rows(journal, now, state, max(1, args.limit))
            print(admin.to_json(rows) if args.json else admin.format_commitment_rows(rows, now))
            return 0
        if args.commitment_action == "show":
            committing = [d.name for d in config.destinations if isinstance(d, DicomDestination) and d.storage_commitment]
            try:
                detail = admin.commitment_detail(journal, args.transaction_uid, committing, now)
            except KeyError:
                print(f"no Storage Commitment transaction {args.transaction_uid}", file=sys.stderr)
                return 1
            print(admin.to_json(detail) if args.json else admin.format_commitment(detail))
            return 0
        if args.commitment_action == "retry":
            operator = admin.local_operator()
            trail = admin.cli_audit_trail(config)
            try:
                try:
                    admin.retry_commitment(journal, args.transaction_uid, now)
                except KeyError as error:
                    why = str(error.args[0]) if error.args else "no such transaction"
                    admin.audit_operator_action(
                        trail, "commitment_retry", operator, transaction_uid=args.transaction_uid,
                        outcome=Outcome.MINOR_FAILURE, description=f"commitment_retry refused: {why}",
                    )
                    print(f"{args.transaction_uid}: not retried: {why}", file=sys.stderr)
                    return 1
                admin.audit_operator_action(trail, "commitment_retry", operator, transaction_uid=args.transaction_uid)
            finally:
                admin.close_audit_trail(trail)
            print(f"{args.transaction_uid}: report owed again; the gateway sends it at its next look")
            return 0
    finally:
        store.close()
    return 2


def _retrieve(args: argparse.Namespace) -> int:
    """``dicom-gateway retrieve list|show``: read the retrieve journal directly (issue 16)."""
    import time

    from gateway import admin
    from gateway import admin_retrieves as ar
    from gateway.stores import describe_store

    config = _load_or_exit(args.config)
    store = _open_store(config)
    now = time.time()
    try:
        journal = ar.retrieve_journal(store)
        if journal is None:
            print(f"the queue journal ({describe_store(config)}) keeps no retrieves", file=sys.stderr)
            return 1
        if args.retrieve_action == "list":
            rows = ar.retrieve_rows(journal, now, ar.parse_state(args.state), max(1, args.limit))
            print(admin.to_json(rows) if args.json else ar.format_retrieve_rows(rows, now))
            return 0
        if args.retrieve_action == "show":
            try:
                detail = ar.retrieve_detail(journal, args.retrieve_id, now)
            except KeyError:
                print(ar.not_on_record(args.retrieve_id, config.retrieve_retention), file=sys.stderr)
                return 1
            print(admin.to_json(detail) if args.json else ar.format_retrieve(detail))
            return 0
    finally:
        store.close()
    return 2


def _studies(args: argparse.Namespace) -> int:
    """``dicom-gateway studies``: the studies journal's rows, newest first (issue 18)."""
    from gateway import admin
    from gateway.notify.cli import format_study_rows, study_rows
    from gateway.stores import describe_store

    config = _load_or_exit(args.config)
    store = _open_store(config)
    try:
        if not hasattr(store, "studies"):
            print(f"the queue journal ({describe_store(config)}) keeps no studies", file=sys.stderr)
            return 1
        rows = study_rows(store, args.state, max(1, args.limit))
        print(admin.to_json(rows) if args.json else format_study_rows(rows))
        return 0
    finally:
        store.close()


def _api_call(config: Any, method: str, path: str, body: bytes | None, token_name: str = "", ca: str = "") -> tuple[int, bytes]:
    """Call the running gateway's admin API with its token.

    :param config: the configuration (``http`` section and spool).
    :param method: GET, POST or DELETE.
    :param path: the path, ``/api/...``.
    :param body: a JSON body, or ``None``.
    :param token_name: which token of ``http.token_file``.
    :param ca: with ``http.tls``: a CA file; by default the gateway's own certificate is trusted as is.
    :returns: ``(status, body)``.
    :raises SystemExit: no token, or the gateway does not answer.
    """
    import http.client
    import ssl

    from gateway.apitokens import TokenFileError, client_token

    http_config = config.http
    if not http_config.enabled or not http_config.port:
        print("the HTTP endpoint is disabled or has no fixed port (http.port)", file=sys.stderr)
        raise SystemExit(2)
    try:
        token = client_token(http_config, config.spool.path, token_name)
    except TokenFileError as error:
        print(f"no admin API token: {error}", file=sys.stderr)
        raise SystemExit(1)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http_config.host, http_config.host)
    connection: http.client.HTTPConnection
    if http_config.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca:
            context.load_verify_locations(ca)
        else:
            # Trust exactly the gateway's own certificate (read from its configuration).
            context.load_verify_locations(http_config.tls.certificate)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.check_hostname = False
        connection = http.client.HTTPSConnection(host, http_config.port, timeout=60, context=context)
    else:
        connection = http.client.HTTPConnection(host, http_config.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if method != "GET":
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as error:
        print(f"cannot reach the gateway's API at {host}:{http_config.port}: {error}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        connection.close()


def _api(args: argparse.Namespace) -> int:
    """``dicom-gateway api METHOD PATH``: print the answer; exit 0 for 2xx, 1 otherwise."""
    config = _load_or_exit(args.config)
    body = args.data.encode("utf-8") if args.data is not None else None
    status, answer = _api_call(config, args.method, args.path, body, args.token_name, args.ca)
    sys.stdout.write(answer.decode("utf-8", "replace"))
    if status >= 300:
        print(f"HTTP {status}", file=sys.stderr)
    return 0 if 200 <= status < 300 else 1


def _reload(args: argparse.Namespace) -> int:
    """``dicom-gateway reload``: POST /api/v1/reload."""
    config = _load_or_exit(args.config)
    status, _answer = _api_call(config, "POST", "/api/v1/reload", None, args.token_name, args.ca)
    if status == 200:
        print("configuration reloaded")
        return 0
    if status == 409:
        print("the gateway refused the new configuration and keeps the running one (see its log)", file=sys.stderr)
        return 1
    print(f"reload failed: HTTP {status}", file=sys.stderr)
    return 1


def _drain(args: argparse.Namespace) -> int:
    """``dicom-gateway drain`` / ``undrain``: POST /api/v1/drain or /api/v1/undrain; print what happens next."""
    import json

    config = _load_or_exit(args.config)
    status, answer = _api_call(config, "POST", f"/api/v1/{args.command}", None, args.token_name, args.ca)
    if status != 200:
        print(f"{args.command} failed: HTTP {status}", file=sys.stderr)
        return 1
    try:
        state = json.loads(answer)
    except ValueError:
        state = {}
    node = state.get("node") or "the gateway"
    if args.command == "undrain":
        print(f"{node}: drain ended; ready and accepting new associations")
    elif state.get("refusing"):
        print(f"{node}: draining; /readyz fails and new associations are rejected (2,3,2); open ones finish")
    else:
        print(
            f"{node}: draining; /readyz fails now, new associations are accepted for "
            f"{float(state.get('grace_seconds', 0)):g}s more, then rejected (2,3,2)"
        )
    return 0


def _find(args: argparse.Namespace) -> int:
    from gateway import admin

    if not (args.study or args.sop_instance or args.patient_id or args.accession):
        print("give --study, --sop-instance, --patient-id or --accession", file=sys.stderr)
        return 2
    config = _load_or_exit(args.config)
    store = _open_store(config)
    try:
        results = store.find(
            study_instance_uid=args.study,
            sop_instance_uid=args.sop_instance,
            patient_id=args.patient_id,
            accession_number=args.accession,
        )
    finally:
        store.close()
    if args.json:
        print(admin.to_json([{"instance": r.__dict__, "entries": [admin.entry_dict(e) for e in es]} for r, es in results]))
    else:
        print(admin.format_find(results))
    return 0 if results else 1


def _replay(args: argparse.Namespace) -> int:
    import os
    import time

    from gateway import admin
    from gateway.audit import Outcome
    from gateway.prepare import NO_MORPH, kind_refusal, retarget_refusal

    config = _load_or_exit(args.config)
    _known_destination(config, args.to)
    # A replay sends the instances as received: only where a route sends them so.
    refusal = retarget_refusal(config.routes, NO_MORPH.plan_hash, args.to)
    wrong_kind = kind_refusal(config.destinations, "", args.to)
    if wrong_kind:
        print(f"not replayed to {args.to}: {wrong_kind}", file=sys.stderr)
        return 1
    if refusal and not args.force:
        print(f"not replayed to {args.to}: the replay sends the instances as received, but {refusal}", file=sys.stderr)
        trail = admin.cli_audit_trail(config)
        admin.audit_operator_action(
            trail, "replay", admin.local_operator(), to=args.to, outcome=Outcome.MINOR_FAILURE,
            description=f"replay of study {args.study} to {args.to} refused: {refusal}",
        )
        admin.close_audit_trail(trail)
        return 1
    store = _open_store(config)
    queued = missing = 0
    new_ids: list[int] = []
    try:
        for record, _entries in store.find(study_instance_uid=args.study):
            if not os.path.exists(record.path):
                missing += 1
                continue
            new_ids.append(int(store.requeue_instance(record.instance_id, args.to, "replay", time.time(), NO_MORPH)))
            queued += 1
    finally:
        store.close()
    if new_ids:
        # A re-target of kept copies: audited with who asked (issue 11).
        trail = admin.cli_audit_trail(config)
        admin.audit_operator_action(
            trail, "replay", admin.local_operator(), entry_ids=new_ids, to=args.to,
            description=f"replay of study {args.study} to {args.to}"
            + (f" (forced past the re-target guard: {refusal})" if refusal else ""),
        )
        admin.close_audit_trail(trail)
    print(f"{queued} instance(s) of study {args.study} queued for {args.to}")
    if missing:
        print(
            f"{missing} instance(s) no longer kept in the spool (set retention.keep_delivered to keep them)",
            file=sys.stderr,
        )
    return 0 if queued else 1


def _start_logging(config: Any, level: str | None) -> None:
    from gateway.logs import build_observer

    observer = build_observer(config.log, sys.stdout, level)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _load_or_exit(path: str) -> Any:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_config(path)
    except ConfigErrors as errors:
        print(f"{path}: invalid configuration ({len(errors.errors)} error(s)):", file=sys.stderr)
        print(str(errors), file=sys.stderr)
        raise SystemExit(1)


def _check_material_or_exit(path: str, config: Any) -> Any:
    """For ``run`` and ``check``: open the TLS and identity files the configuration names."""
    from gateway.security import check_material

    # TLS certificates, keys and users files are opened here, so a missing
    # or mismatched file is one line per problem, not a start-up traceback.
    problems = check_material(config)
    if config.http.enabled and config.http.tls is not None:
        from gateway.security import server_tls_settings
        from gateway.tls import ServerTLS, TLSConfigError

        try:
            ServerTLS(server_tls_settings(config.http.tls))
        except TLSConfigError as error:
            problems.append(f"http.tls: {error}")
    if config.dicomweb is not None:
        # Issue 17: the STOW-RS addresses' TLS files, checked as the admin port's.
        from gateway.security import server_tls_settings
        from gateway.tls import ServerTLS, TLSConfigError

        for index, address in enumerate(config.dicomweb.listen):
            if address.tls is None:
                continue
            try:
                ServerTLS(server_tls_settings(address.tls))
            except TLSConfigError as error:
                problems.append(f"dicomweb.listen[{index}].tls: {error}")
    if problems:
        print(f"{path}: unusable TLS or identity files ({len(problems)} problem(s)):", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)
    return config


def _run(reactor: Any, config: Any) -> Deferred[None]:
    from gateway.service import GatewayService

    import signal

    from gateway.queue.interfaces import StoreUnavailable

    try:
        service = GatewayService(reactor, config)
    except StoreUnavailable as error:
        # PostgreSQL away at start: one line, no traceback; the service manager restarts us.
        from gateway.stores import describe_store

        print(f"cannot open the queue store ({describe_store(config)}): {error}", file=sys.stderr)
        raise SystemExit(1)
    if config.http.enabled:
        from gateway.apitokens import TokenFileError
        from gateway.http import http_service

        # Up before recovery, so /healthz answers and /readyz says why it is not ready yet.
        try:
            http = http_service(reactor, service, service.metrics, load_config)
        except TokenFileError as error:
            print(f"the admin API token file in the spool folder ({config.spool.path}) is unusable: {error}", file=sys.stderr)
            raise SystemExit(1)
        http.startService()
        reactor.addSystemEventTrigger("before", "shutdown", http.stopService)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(service.reload, load_config))
    return Deferred()  # fires never: the gateway runs until the reactor is stopped by a signal


async def _echo(reactor: Any, args: argparse.Namespace) -> None:
    from gateway.associate import connect_tcp

    host, port, calling, called = args.host, args.port, args.aet, args.aec
    destination: Any = None
    if port is None:
        if not args.config:
            print("give HOST PORT, or a destination name with -c CONFIG", file=sys.stderr)
            raise SystemExit(2)
        config = _load_or_exit(args.config)
        _known_destination(config, args.host)
        destination = config.destination(args.host)
        if not hasattr(destination, "ae_title"):
            kind = "DICOMweb" if hasattr(destination, "url") else "folder"
            print(f"{args.host} is a {kind} destination; nothing to echo", file=sys.stderr)
            raise SystemExit(2)
        host, port = destination.host, destination.port
        calling, called = destination.calling_ae_title, destination.ae_title
    try:
        if destination is not None:
            # A configured destination is reached exactly as its worker and circuit
            # probe reach it: its timeouts, its max PDU and, when it has ``tls``, DICOM
            # TLS (PS3.15 Annex B) with its CA and server name, never plain TCP.
            from gateway.forward import connect_dicom

            assoc = await connect_dicom(reactor, destination, [])
        else:
            assoc = await connect_tcp(
                reactor, host, port, calling_ae_title=calling, called_ae_title=called,
                proposals=None, max_pdu_length=args.max_pdu, timeout=args.timeout,
            )
    except Exception as e:
        print(f"C-ECHO to {called}@{host}:{port} failed: {e}")
        raise SystemExit(1)
    status = await assoc.echo()
    await assoc.release()
    print(f"C-ECHO status 0x{status:04X}")
    if status != 0:
        raise SystemExit(1)


async def _store(reactor: Any, args: argparse.Namespace) -> None:
    from gateway.associate import connect_tcp, proposals_for_files

    assoc = await connect_tcp(
        reactor, args.host, args.port, calling_ae_title=args.aet, called_ae_title=args.aec,
        proposals=proposals_for_files(args.files), max_pdu_length=args.max_pdu, timeout=args.timeout,
    )
    failures = 0
    try:
        for path in args.files:
            result = await assoc.store(path)
            print(f"{path}: status 0x{result.status:04X}{' ' + result.error_comment if result.error_comment else ''}")
            if result.status not in (0x0000, 0x0001, 0x0107, 0x0116) and not (0xB000 <= result.status <= 0xBFFF):
                failures += 1
    finally:
        if assoc.is_open:
            await assoc.release()
    if failures:
        raise SystemExit(1)


def _dicomweb_token(name: str) -> int:
    """``dicom-gateway dicomweb-token NAME``: print a new token (for the client) and its hashed line (for the file).

    Only the hash goes into ``dicomweb.auth.tokens_file``; the token itself is
    shown once, here, and is never stored by the gateway (issue 17).

    :returns: the exit status.
    """
    from gateway.dicomweb.tokens import hash_line, new_token

    token = new_token()
    try:
        line = hash_line(name, token)
    except ValueError as error:
        print(f"dicomweb-token: {error}", file=sys.stderr)
        return 2
    print(f"token (give it to the client, as 'Authorization: Bearer <token>'): {token}")
    print(f"line for dicomweb.auth.tokens_file: {line}")
    return 0


def _console_user(args: argparse.Namespace, stdin: Any = None, stdout: Any = None) -> int:
    """``dicom-gateway console-user NAME --role ROLE [--show-phi] [--file PATH]`` (issue 18).

    The password is read from stdin: twice, with prompts that are not echoed,
    on a terminal; else one line (for scripts: ``printf '%s\\n' "$PW" | ...``).
    The line is printed, or with ``--file`` replaces the user's line there (or
    is added), the file kept at mode 0600. The running gateway re-reads the
    file when it changes.
    """
    import getpass

    from gateway.console.users import _NAME, format_user, hash_password, write_user

    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    if not _NAME.match(args.name):
        print("console-user: the name must be 1-64 of A-Z a-z 0-9 . _ @ -", file=sys.stderr)
        return 2
    if stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("console-user: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("console-user: the password must be at least 8 characters", file=sys.stderr)
        return 1
    line = format_user(args.name, args.role, hash_password(password), show_phi=args.show_phi)
    if not args.file:
        print(line, file=stdout)
        return 0
    try:
        write_user(args.file, line, args.name)
    except OSError as error:
        print(f"console-user: {args.file}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"console-user: {args.name} ({args.role}) written to {args.file}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dicom-gateway`` console script.

    :param argv: arguments without the program name; ``sys.argv[1:]`` by default.
    """
    from twisted.internet.task import react

    args = _parser().parse_args(argv)
    if args.command == "queue":
        raise SystemExit(_queue(args))
    if args.command == "commitment":
        raise SystemExit(_commitment(args))
    if args.command == "retrieve":
        raise SystemExit(_retrieve(args))
    if args.command == "studies":
        raise SystemExit(_studies(args))
    if args.command == "db":
        raise SystemExit(_db(args))
    if args.command == "find":
        raise SystemExit(_find(args))
    if args.command == "api":
        raise SystemExit(_api(args))
    if args.command == "reload":
        raise SystemExit(_reload(args))
    if args.command in ("drain", "undrain"):
        raise SystemExit(_drain(args))
    if args.command == "replay":
        raise SystemExit(_replay(args))
    if args.command == "audit":
        from gateway.audit import verify_command

        raise SystemExit(verify_command(args.files))
    if args.command == "dicomweb-token":
        raise SystemExit(_dicomweb_token(args.name))
    if args.command == "console-user":
        raise SystemExit(_console_user(args))
    if args.command == "tls":
        from gateway.tlsinit import run_tls_init

        raise SystemExit(run_tls_init(args.directory, args.name, args.force))
    if args.command == "check":
        config = _check_material_or_exit(args.config, _load_or_exit(args.config))
        if not args.files:
            from gateway.stores import describe_store

            message = (
                f"{args.config}: configuration is valid (AE title {config.ae_title}, {len(config.listen)} listener(s), "
                f"{len(config.destinations)} destination(s), {len(config.routes)} route(s); "
                f"node {config.node}, queue {describe_store(config)}{', shared spool' if config.spool.shared else ''})"
            )
            from gateway.config.commitment import commitment_warnings
            from gateway.config.qr import qr_warnings

            # Allowed but worth a line (issue 15: 'committed' with no archive that commits;
            # issue 16: a retrieve section with no move destination).
            warnings = commitment_warnings(config) + qr_warnings(config)
            if args.json:
                from gateway.admin import to_json

                print(to_json({"config": args.config, "valid": True, "warnings": warnings}))
            else:
                print(message)
                for warning in warnings:
                    print(f"warning: {warning}")
            return
        from gateway.check import check_files, format_report

        reports = check_files(
            config,
            args.files,
            calling_ae_title=args.calling_ae,
            called_ae_title=args.called_ae,
            source_ip=args.source_ip,
            listener=args.listener,
        )
        if args.json:
            from gateway.admin import to_json

            print(to_json(reports))
        else:
            print("\n\n".join(format_report(r) for r in reports))
        if any("error" in r for r in reports):
            raise SystemExit(1)
        return
    if args.command == "run":
        config = _check_material_or_exit(args.config, _load_or_exit(args.config))
        _start_logging(config, args.log_level)
        from twisted.internet import reactor

        from gateway.clock import use_monotonic_clock

        # HARDENING F19: timers must not stall or burst when the wall clock jumps.
        use_monotonic_clock(reactor)
        react(_run, [config])
    elif args.command == "echo":
        react(lambda reactor: Deferred.fromCoroutine(_echo(reactor, args)))
    elif args.command == "store":
        react(lambda reactor: Deferred.fromCoroutine(_store(reactor, args)))
