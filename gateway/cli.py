"""The ``dicom-gateway`` command line.

Subcommands:

* ``run -c CONFIG``: run the gateway in the foreground, logging to stdout,
  until SIGTERM or SIGINT (a clean stop: listeners close, open associations
  are aborted, partial instances discarded).
* ``check -c CONFIG``: validate a configuration and exit 0 (valid) or 1.
* ``echo``: send a C-ECHO to an AE (a Verification SCU, for testing a peer).
* ``store``: send Part 10 files to an AE with C-STORE over one association.

The command is thin: it parses arguments, builds objects and runs them under
:func:`twisted.internet.task.react`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from gateway import __version__
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-gateway", description="A DICOM routing gateway.")
    parser.add_argument("--version", action="version", version=f"dicom-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, help="the gateway configuration (YAML)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])

    check = sub.add_parser("check", help="validate a configuration")
    check.add_argument("-c", "--config", required=True, help="the gateway configuration (YAML)")

    for name, help_text in (("echo", "send a C-ECHO to an AE"), ("store", "send DICOM files to an AE")):
        scu = sub.add_parser(name, help=help_text)
        scu.add_argument("host")
        scu.add_argument("port", type=int)
        scu.add_argument("--aet", default="DICOMGW", help="our (calling) AE title")
        scu.add_argument("--aec", default="ANY-SCP", help="the called AE title")
        scu.add_argument("--max-pdu", type=int, default=262144, help="our maximum PDU length")
        scu.add_argument("--timeout", type=float, default=30.0, help="ACSE and DIMSE timeout, seconds")
        if name == "store":
            scu.add_argument("files", nargs="+", help="Part 10 files to send")
    return parser


def _start_logging(level: str) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _load_or_exit(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigErrors as errors:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        print(str(errors), file=sys.stderr)
        raise SystemExit(1)


def _run(reactor: Any, config: Any) -> Deferred[None]:
    from gateway.service import GatewayService

    service = GatewayService(reactor, config)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # fires never: the gateway runs until the reactor is stopped by a signal


async def _echo(reactor: Any, args: argparse.Namespace) -> None:
    from gateway.associate import connect_tcp

    assoc = await connect_tcp(
        reactor, args.host, args.port, calling_ae_title=args.aet, called_ae_title=args.aec,
        proposals=None, max_pdu_length=args.max_pdu, timeout=args.timeout,
    )
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dicom-gateway`` console script.

    :param argv: arguments without the program name; ``sys.argv[1:]`` by default.
    """
    from twisted.internet.task import react

    args = _parser().parse_args(argv)
    if args.command == "check":
        config = _load_or_exit(args.config)
        print(f"{args.config}: configuration is valid (AE title {config.ae_title}, {len(config.listen)} listener(s))")
        return
    if args.command == "run":
        config = _load_or_exit(args.config)
        _start_logging(args.log_level)
        react(_run, [config])
    elif args.command == "echo":
        react(lambda reactor: Deferred.fromCoroutine(_echo(reactor, args)))
    elif args.command == "store":
        react(lambda reactor: Deferred.fromCoroutine(_store(reactor, args)))
