"""The DICOM conformance statement (PS3.2), generated so that its tables cannot drift from the code.

``docs/conformance-statement.md`` is entirely produced by this module:
the prose is :data:`TEMPLATE`, read from :data:`TEMPLATE_PATH`
(``gateway/templates/conformance-statement.md.in``, package data so that an
installed copy renders too), written by hand and following the PS3.2 Annex A
outline, and every table the code can answer is computed at render time from
the code's own lists and defaults:

* ``identity``: :data:`gateway.identity.IMPLEMENTATION_CLASS_UID` and
  :data:`~gateway.identity.IMPLEMENTATION_VERSION_NAME` (PS3.7 D.3.3.2);
* ``verification-sop-class`` and ``storage-sop-classes``:
  :data:`gateway.sopclasses.VERIFICATION_SOP_CLASS` and
  :data:`~gateway.sopclasses.STORAGE_SOP_CLASSES` (PS3.4 A.4, Annex B);
* ``transfer-syntaxes``: :data:`~gateway.sopclasses.ACCEPTED_TRANSFER_SYNTAXES`
  with the encoding facts of :mod:`gateway.sopclasses` (PS3.5 Annex A);
* ``scu-proposals``: what :func:`gateway.forward.proposals_for` proposes
  for a native and for an encapsulated instance (PS3.8 9.3.2.2);
* ``configuration-defaults``: the defaults of
  :mod:`gateway.config.schema`;
* ``tls-profiles``: :data:`gateway.tls.PROFILE_CIPHERS` and
  :data:`~gateway.tls.TLS13_SUITES` (PS3.15 B.10, B.11);
* ``commitment-sop-class``, ``commitment-policies`` and
  ``commitment-failure-reasons``: the constants of
  :mod:`gateway.commitment.model` and :data:`gateway.config.schema.COMMITMENT_POLICIES`
  (PS3.4 Annex J, PS3.3 C.14.1.1; issue 15);
* ``qr-sop-classes``: :data:`gateway.sopclasses.QR_FIND_SOP_CLASSES`,
  ``QR_MOVE_SOP_CLASSES`` and ``QR_GET_SOP_CLASSES`` (PS3.4 C.6; issue 16).

Each generated table sits between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` comments, so a reader sees what not to edit
by hand. Usage::

    python -m gateway.conformance > docs/conformance-statement.md
    python -m gateway.conformance --check    # exit 1 and a diff if stale

Because the whole document is rendered from :data:`TEMPLATE`, redirecting
the output over the file is safe (nothing is read from it). The unit test
``tests/unit/test_conformance.py`` renders in memory and compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from collections.abc import Callable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from gateway import identity, sopclasses

#: Where the statement lives, relative to the repository root.
DOCUMENT_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "conformance-statement.md"

#: The statement's prose (PS3.2 Annex A outline): Markdown with one
#: ``@@GENERATED name@@`` line where each generated table goes. Edit the prose there.
TEMPLATE_PATH: Final[Traversable] = resources.files("gateway") / "templates" / "conformance-statement.md.in"

#: The contents of :data:`TEMPLATE_PATH`.
TEMPLATE: Final = TEMPLATE_PATH.read_text(encoding="utf-8")

#: A placeholder in :data:`TEMPLATE`, replaced by a marked generated block.
_PLACEHOLDER: Final = re.compile(r"^@@GENERATED ([a-z0-9-]+)@@$", re.MULTILINE)

#: The storage SOP class of the examples in the SCU proposal table (CT Image Storage).
_EXAMPLE_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.2"
#: JPEG 2000 Image Compression (PS3.5 A.4.4): the encapsulated example.
_EXAMPLE_ENCAPSULATED: Final = "1.2.840.10008.1.2.4.91"


def begin_marker(name: str) -> str:
    """The comment that opens generated block ``name``.

    :param name: the block's name, e.g. ``storage-sop-classes``.
    :returns: an HTML comment line (invisible when the Markdown is rendered).
    """
    return f"<!-- BEGIN GENERATED: {name} (python -m gateway.conformance; do not edit by hand) -->"


def end_marker(name: str) -> str:
    """The comment that closes generated block ``name``.

    :param name: the block's name.
    :returns: an HTML comment line.
    """
    return f"<!-- END GENERATED: {name} -->"


def _cell(text: str) -> str:
    """Escape a value for a Markdown table cell (a ``|`` would split the cell)."""
    return text.replace("|", "\\|")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Render a Markdown table.

    :param header: the column titles.
    :param rows: the rows, each as long as ``header``.
    :returns: the table's lines joined by newlines.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_retired(uid: str) -> bool:
    """Whether PS3.6 lists ``uid`` as retired (from pydicom's registry; unknown UIDs are current)."""
    from pydicom.uid import UID

    return bool(UID(uid).is_retired)


def transfer_syntax_name(uid: str) -> str:
    """The PS3.6 name of a transfer syntax we accept.

    pydicom's registry names most of them; the few published after it come
    from :mod:`gateway.sopclasses`' own list of newer syntaxes.

    :param uid: a transfer syntax UID.
    :returns: its name, or the UID itself if nobody knows it.
    """
    from pydicom.uid import UID

    name = UID(uid).name
    if name == uid:
        name = sopclasses._NEWER_TRANSFER_SYNTAXES.get(uid, uid)
    return str(name)


# ---------------------------------------------------------------------------
# Generated blocks
# ---------------------------------------------------------------------------


def render_identity() -> str:
    """The implementation identifying information (PS3.7 D.3.3.2) sent in every A-ASSOCIATE-RQ and -AC.

    :returns: a two-row Markdown table.
    """
    return _table(
        ("Item", "Value"),
        [
            ("Implementation Class UID", f"`{identity.IMPLEMENTATION_CLASS_UID}`"),
            ("Implementation Version Name", f"`{identity.IMPLEMENTATION_VERSION_NAME}`"),
        ],
    )


def render_verification_sop_class() -> str:
    """The Verification SOP Class row (PS3.4 A.4).

    :returns: a one-row Markdown table.
    """
    return _table(
        ("SOP Class Name", "SOP Class UID", "SCU", "SCP"),
        [("Verification SOP Class", f"`{sopclasses.VERIFICATION_SOP_CLASS}`", "Yes", "Yes")],
    )


def render_storage_sop_classes() -> str:
    """Every storage SOP class accepted as SCP and sent as SCU (PS3.4 Annex B).

    :returns: a count line and a Markdown table in the order of
        :data:`gateway.sopclasses.STORAGE_SOP_CLASSES`.
    """
    rows = []
    for uid, name in sopclasses.STORAGE_SOP_CLASSES.items():
        rows.append((name + (" (retired)" if _is_retired(uid) else ""), f"`{uid}`", "Yes", "Yes"))
    count = f"{len(rows)} Storage SOP Classes, {sum(_is_retired(u) for u in sopclasses.STORAGE_SOP_CLASSES)} of them retired."
    return count + "\n\n" + _table(("SOP Class Name", "SOP Class UID", "SCU", "SCP"), rows)


def _encoding(uid: str) -> str:
    """How a transfer syntax encodes the data set and its Pixel Data (PS3.5 A.4, 8.4)."""
    parts = ["Implicit VR" if sopclasses.is_implicit_vr(uid) else "Explicit VR"]
    parts.append("Little Endian" if sopclasses.is_little_endian(uid) else "Big Endian")
    if sopclasses.is_deflated(uid):
        parts.append("deflated data set")
    if sopclasses.is_encapsulated(uid):
        parts.append("encapsulated Pixel Data")
    elif uid in sopclasses._JPIP:
        parts.append("Pixel Data referenced (JPIP)")
    else:
        parts.append("native Pixel Data")
    return ", ".join(parts)


def render_transfer_syntaxes() -> str:
    """Every transfer syntax accepted as SCP, in the code's order (PS3.5 Annex A).

    :returns: a count line and a Markdown table.
    """
    rows = []
    for uid in sopclasses.ACCEPTED_TRANSFER_SYNTAXES:
        name = transfer_syntax_name(uid) + (" (retired)" if _is_retired(uid) else "")
        rows.append((name, f"`{uid}`", _encoding(uid)))
    count = f"{len(rows)} Transfer Syntaxes."
    return count + "\n\n" + _table(("Transfer Syntax Name", "UID", "Encoding"), rows)


def render_scu_proposals() -> str:
    """The presentation contexts the Storage SCU proposes, computed by the forwarder itself.

    :returns: a Markdown table: one row per proposed context for a CT
        instance in each native syntax and in one encapsulated syntax, plus
        the Verification context every association carries.
    """
    from gateway.forward import proposals_for  # imports Twisted: only when generating

    rows: list[tuple[str, ...]] = []
    originals = (sopclasses.IMPLICIT_VR_LE, sopclasses.EXPLICIT_VR_LE, sopclasses.EXPLICIT_VR_BE,
                 sopclasses.DEFLATED_EXPLICIT_VR_LE, _EXAMPLE_ENCAPSULATED)
    for original in originals:
        for number, (_, syntaxes) in enumerate(proposals_for([(_EXAMPLE_SOP_CLASS, original)]), start=1):
            rows.append(
                (
                    transfer_syntax_name(original),
                    str(number),
                    ", ".join(f"{transfer_syntax_name(ts)} (`{ts}`)" for ts in syntaxes),
                    "original bytes" if syntaxes == [original] else "converted (native re-encoding) before sending",
                )
            )
    rows.append(
        (
            "(any)",
            "first",
            f"{transfer_syntax_name(sopclasses.IMPLICIT_VR_LE)}, {transfer_syntax_name(sopclasses.EXPLICIT_VR_LE)}"
            f" for Verification (`{sopclasses.VERIFICATION_SOP_CLASS}`)",
            "C-ECHO probes",
        )
    )
    return _table(("Instance stored in", "Context", "Transfer syntaxes proposed (in order)", "Used for"), rows)


def _defaults(cls: Any) -> dict[str, Any]:
    """The default of every field of a configuration dataclass that has one."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            found[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            found[item.name] = item.default_factory()
    return found


def _show(value: Any, unit: str) -> str:
    """Format a default value for the configuration table."""
    if unit == "bytes" and isinstance(value, int):
        for size, suffix in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
            if value >= size and value % size == 0:
                return f"{value} ({value // size} {suffix})"
    if unit == "s" and isinstance(value, float):
        if value >= 86400 and value % 86400 == 0:
            return f"{value:g} s ({value / 86400:g} days)"
        return f"{value:g} s"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return str(value)


#: (YAML key, schema class, field, unit, meaning) of each default the statement lists.
_CONFIGURATION_ROWS: Final = (
    ("limits.max_associations", "LimitsConfig", "max_associations", "", "concurrent inbound associations (the next gets A-ASSOCIATE-RJ 2, 3, 2)"),
    ("limits.max_pdu_length", "LimitsConfig", "max_pdu_length", "bytes", "Maximum Length announced as SCP (PS3.8 D.1); 4096 to 16777216"),
    ("limits.acse_timeout", "LimitsConfig", "acse_timeout", "s", "ARTIM timer (PS3.8 9.1.5): A-ASSOCIATE-RQ and A-RELEASE deadlines"),
    ("limits.network_timeout", "LimitsConfig", "network_timeout", "s", "idle association: A-ABORT after this long without a PDU"),
    ("limits.max_instance_size", "LimitsConfig", "max_instance_size", "bytes", "largest data set accepted (larger: 0xC000)"),
    ("spool.min_free_bytes", "SpoolConfig", "min_free_bytes", "bytes", "free-space floor of the spool (below it: 0xA700 and RJ 2, 3, 1)"),
    ("accept.calling_ae_titles", "AcceptConfig", "calling_ae_titles", "", "calling AE title patterns allowed"),
    ("accept.unknown_sop_classes", "AcceptConfig", "unknown_sop_classes", "", "accept SOP classes not in the table above"),
    ("duplicates.window", "GatewayConfig", "duplicate_window", "s", "identical re-sends within it are not forwarded again"),
    ("destinations.NAME.max_associations", "DicomDestination", "max_associations", "", "concurrent associations to one destination"),
    ("destinations.NAME.batch_size", "DicomDestination", "batch_size", "", "instances per association before it is released"),
    ("destinations.NAME.idle_release", "DicomDestination", "idle_release", "s", "idle association to a destination released after"),
    ("destinations.NAME.max_pdu_length", "DicomDestination", "max_pdu_length", "bytes", "Maximum Length announced as SCU"),
    ("destinations.NAME.connect_timeout", "DicomDestination", "connect_timeout", "s", "TCP connection timeout"),
    ("destinations.NAME.acse_timeout", "DicomDestination", "acse_timeout", "s", "A-ASSOCIATE-AC/RJ and A-RELEASE-RP deadline"),
    ("destinations.NAME.dimse_timeout", "DicomDestination", "dimse_timeout", "s", "C-STORE-RSP deadline"),
    ("destinations.NAME.retry.initial_delay", "RetryConfig", "initial_delay", "s", "first retry delay (doubling, jittered)"),
    ("destinations.NAME.retry.max_delay", "RetryConfig", "max_delay", "s", "longest retry delay"),
    ("destinations.NAME.retry.max_attempts", "RetryConfig", "max_attempts", "", "attempts before an instance is dead-lettered"),
    ("destinations.NAME.retry.max_age", "RetryConfig", "max_age", "s", "age after which an instance is dead-lettered"),
    ("destinations.NAME.retry.unknown_status_attempts", "RetryConfig", "unknown_status_attempts", "", "attempts for an unknown status code"),
    ("destinations.NAME.circuit.failures", "CircuitConfig", "failures", "", "destination-wide failures that open the circuit"),
    ("listen[i].tls.profile", "ListenerTLSConfig", "profile", "", "TLS profile of a listener"),
    ("listen[i].tls.handshake_timeout", "ListenerTLSConfig", "handshake_timeout", "s", "TLS handshake deadline"),
    ("listen[i].tls.crl", "ListenerTLSConfig", "crl", "", "PEM file of CRLs checked for client certificates (empty: no revocation check)"),
    ("listen[i].proxy_protocol.timeout", "ProxyProtocolConfig", "timeout", "s",
     "PROXY protocol header deadline (behind HAProxy; no header in time: the connection is closed)"),
    ("drain.grace", "DrainConfig", "grace", "s", "after dicom-gateway drain, new associations accepted this long, then A-ASSOCIATE-RJ 2, 3, 2"),
    # Storage Commitment (issue 15); commitment.deadline's default depends on the policy (4.2.1.4.4).
    ("commitment.policy", "CommitmentConfig", "policy", "", "what a committed instance in a report means (received, delivered, committed)"),
    ("commitment.deadline", "CommitmentConfig", "deadline", "s",
     "from the N-ACTION, when the report goes with what is known (24 h by default for policy committed)"),
    ("commitment.report_deadline", "CommitmentConfig", "report_deadline", "s", "from the N-ACTION, when an undelivered report becomes a dead letter"),
    ("commitment.lookback", "CommitmentConfig", "lookback", "s", "how far back received instances are looked up by SOP Instance UID"),
    ("commitment.unrouted", "CommitmentConfig", "unrouted", "", "a dropped or unrouted instance: fail (0x0110) or success"),
    ("commitment.report_association", "CommitmentConfig", "report_association", "", "report on a new association (new) or on the requester's open one when it still is (open)"),
    ("commitment.retry.initial", "CommitmentConfig", "retry_initial", "s", "first retry of a report delivery (doubling)"),
    ("commitment.retry.max", "CommitmentConfig", "retry_max", "s", "longest wait between report delivery attempts"),
    ("modalities.NAME.acse_timeout", "ModalityConfig", "acse_timeout", "s", "A-ASSOCIATE-AC/RJ and A-RELEASE-RP deadline when reporting"),
    ("modalities.NAME.dimse_timeout", "ModalityConfig", "dimse_timeout", "s", "N-EVENT-REPORT-RSP deadline"),
    ("destinations.NAME.storage_commitment", "DicomDestination", "storage_commitment", "", "the archive is asked to commit delivered copies (policy committed)"),
    ("destinations.NAME.commitment_timeout", "DicomDestination", "commitment_timeout", "s", "wait for the archive's N-EVENT-REPORT before asking again"),
    # Query/Retrieve (issue 16).
    ("query.mode", "QueryConfig", "mode", "", "merge: every source in parallel, duplicates removed (first source wins); first: in order, the first with matches"),
    ("query.timeout", "QueryConfig", "timeout", "s", "a source slower than this is cancelled and left out (or fails a strict query)"),
    ("query.strict", "QueryConfig", "strict", "", "a failed or slow source fails the whole query"),
    ("query.max_results", "QueryConfig", "max_results", "", "pending responses per query; then the sources are cancelled and the query ends 0xA700"),
    ("query.relational", "QueryConfig", "relational", "", "relational queries granted to requesters that ask and proposed to the sources (PS3.4 C.5.1.1)"),
    ("retrieve.mode", "RetrieveConfig", "mode", "", "relay: the sources move to the gateway, which sends on; pass_through: straight to the destination"),
    ("retrieve.timeout", "RetrieveConfig", "timeout", "s", "a retrieve ends with what was done after this long"),
)


def render_configuration_defaults() -> str:
    """The defaults of the configuration keys that shape the DICOM behaviour.

    :returns: a Markdown table read from the dataclass defaults of
        :mod:`gateway.config.schema`.
    """
    from gateway.config import schema

    rows = []
    for key, class_name, field_name, unit, meaning in _CONFIGURATION_ROWS:
        value = _defaults(getattr(schema, class_name))[field_name]
        rows.append((f"`{key}`", _show(value, unit), meaning))
    return _table(("Key", "Default", "Meaning"), rows)


def render_tls_profiles() -> str:
    """The TLS profiles offered and their cipher suites (PS3.15 B.10, B.11).

    :returns: a Markdown table from :mod:`gateway.tls` and the schema's
        profile names.
    """
    from gateway.config.schema import TLS_PROFILES
    from gateway.tls import PROFILE_CIPHERS, TLS13_SUITES, TLSProfile

    titles = {
        TLSProfile.BCP195_ND: "Non-Downgrading BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.10)",
        TLSProfile.BCP195_EXTENDED: "Extended BCP 195 TLS Profile (PS3.15 B.11)",
    }
    rows = []
    for name in TLS_PROFILES:
        profile = TLSProfile(name)
        rows.append(
            (
                f"`{name}`" + (" (default)" if name == TLS_PROFILES[0] else ""),
                titles[profile],
                "TLS 1.2, TLS 1.3",
                ", ".join(PROFILE_CIPHERS[profile].split(":")),
                ", ".join(TLS13_SUITES.split(":")),
            )
        )
    return _table(("Configuration value", "Profile", "Protocol versions", "TLS 1.2 cipher suites", "TLS 1.3 suites"), rows)


def render_commitment_sop_class() -> str:
    """The Storage Commitment Push Model SOP Class row and its well-known instance (PS3.4 J.3, J.3.2.1.2).

    :returns: a one-row Markdown table.
    """
    from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH

    return _table(
        ("SOP Class Name", "SOP Class UID", "Well-known SOP Instance UID", "SCU", "SCP"),
        [
            (
                "Storage Commitment Push Model SOP Class",
                f"`{STORAGE_COMMITMENT_PUSH}`",
                f"`{STORAGE_COMMITMENT_INSTANCE}`",
                "Yes (towards archives with `storage_commitment: true`)",
                "Yes (with a `commitment` section)",
            )
        ],
    )


#: The Q/R SOP class names (PS3.4 C.6.1.1, C.6.2.1), by UID.
_QR_NAMES: Final[Mapping[str, str]] = {
    "1.2.840.10008.5.1.4.1.2.1.1": "Patient Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.1.2": "Patient Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.1.3": "Patient Root Query/Retrieve Information Model - GET",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.2.2": "Study Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.2.3": "Study Root Query/Retrieve Information Model - GET",
}


def render_qr_sop_classes() -> str:
    """The Query/Retrieve SOP classes, in both roles (PS3.4 C.6; issue 16).

    :returns: a Markdown table, one row per class of the acceptor's lists.
    """
    rows = []
    for classes, scp_when, scu_when in (
        (sopclasses.QR_FIND_SOP_CLASSES, "Yes (with a `query` section)", "Yes (towards `query.sources`)"),
        (sopclasses.QR_MOVE_SOP_CLASSES, "Yes (with a `retrieve` section)", "Yes (towards `retrieve.sources`)"),
        (sopclasses.QR_GET_SOP_CLASSES, "Yes (with a `retrieve` section)", "Yes (towards `retrieve.sources` that support it)"),
    ):
        for uid in sorted(classes):
            rows.append((_QR_NAMES[uid], f"`{uid}`", scu_when, scp_when))
    return _table(("SOP Class Name", "SOP Class UID", "SCU", "SCP"), rows)


#: What each ``commitment.policy`` promises of an instance reported committed (issue 15).
_POLICY_MEANINGS: Final[Mapping[str, str]] = {
    "received": "the instance is durably in the gateway's custody (spool file fsync'd, journal committed): "
    "the promise of its C-STORE success",
    "delivered": "every destination its routes named has acknowledged its copy (C-STORE success, or the folder "
    "file written); a copy dead-lettered at any destination fails it (0x0110)",
    "committed": "as delivered, and every DICOM destination with `storage_commitment: true` has itself reported "
    "its copy committed (Storage Commitment with the gateway as SCU); without such a destination it means delivered",
}


def render_commitment_policies() -> str:
    """Each ``commitment.policy`` and what it promises (one row per :data:`COMMITMENT_POLICIES` value).

    :returns: a Markdown table.
    """
    from gateway.config.schema import COMMITMENT_POLICIES

    return _table(("Policy", "An instance is reported committed when"), [(f"`{p}`", _POLICY_MEANINGS[p]) for p in COMMITMENT_POLICIES])


#: The Failure Reasons (0008,1197) the gateway's reports carry, and when (PS3.3 C.14.1.1).
_FAILURE_REASONS_SENT: Final[Mapping[str, str]] = {
    "PROCESSING_FAILURE": "a copy was dead-lettered, an archive reported it failed, the instance was dropped by a rule "
    "or kept as unrouted (unless `unrouted: success`), or the deadline passed before it was known to hold",
    "NO_SUCH_OBJECT_INSTANCE": "nothing was received under its SOP Instance UID within `lookback` (for `received` at once, "
    "otherwise at the deadline)",
    "CLASS_INSTANCE_CONFLICT": "the instance received under that UID has another SOP Class UID than the one asked about",
}


def render_commitment_failure_reasons() -> str:
    """The Failure Reasons the reports carry (:class:`gateway.commitment.model.FailureReason`).

    :returns: a Markdown table.
    """
    from gateway.commitment.model import FailureReason

    rows: list[tuple[str, ...]] = []
    for name, when in _FAILURE_REASONS_SENT.items():
        reason = FailureReason[name]
        rows.append((f"0x{int(reason):04X}", name.replace("_", " ").capitalize(), when))
    return _table(("Failure Reason", "Meaning", "When"), rows)


#: Every generated block by name, in no particular order.
GENERATORS: Final[Mapping[str, Callable[[], str]]] = {
    "identity": render_identity,
    "verification-sop-class": render_verification_sop_class,
    "storage-sop-classes": render_storage_sop_classes,
    "transfer-syntaxes": render_transfer_syntaxes,
    "scu-proposals": render_scu_proposals,
    "configuration-defaults": render_configuration_defaults,
    "tls-profiles": render_tls_profiles,
    "commitment-sop-class": render_commitment_sop_class,
    "commitment-policies": render_commitment_policies,
    "commitment-failure-reasons": render_commitment_failure_reasons,
    "qr-sop-classes": render_qr_sop_classes,
}


def render(template: str | None = None) -> str:
    """Render the conformance statement.

    :param template: Markdown with ``@@GENERATED name@@`` lines;
        :data:`TEMPLATE` by default.
    :returns: the document, each placeholder replaced by its marked block.
    :raises KeyError: for a placeholder naming no generator.
    """
    text = TEMPLATE if template is None else template

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{begin_marker(name)}\n{GENERATORS[name]()}\n{end_marker(name)}"

    return _PLACEHOLDER.sub(block, text)


def check(path: Path = DOCUMENT_PATH) -> list[str]:
    """Compare the document on disk with a fresh rendering.

    :param path: the document to check.
    :returns: the unified diff lines (empty when the document is current).
    """
    expected = render()
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        actual = ""
    if actual == expected:
        return []
    return list(
        difflib.unified_diff(
            actual.splitlines(keepends=True), expected.splitlines(keepends=True), str(path), "rendered"
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: print the statement, or ``--check`` the file against the code.

    :param argv: arguments without the program name; ``sys.argv[1:]`` by default.
    :returns: 0, or 1 when ``--check`` finds the document stale.
    """
    parser = argparse.ArgumentParser(prog="python -m gateway.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff if the document is stale")
    parser.add_argument("--path", type=Path, default=DOCUMENT_PATH, help="the document for --check")
    args = parser.parse_args(argv)
    if args.check:
        diff = check(args.path)
        if diff:
            sys.stdout.writelines(diff)
            print(f"\n{args.path} is stale: run python -m gateway.conformance > {args.path}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
