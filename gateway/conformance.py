"""The DICOM conformance statement (PS3.2), generated so that its tables cannot drift from the code.

``docs/conformance-statement.md`` is entirely produced by this module:
the prose is :data:`TEMPLATE`, written by hand and following the PS3.2
Annex A outline, and every table the code can answer is computed at render
time from the code's own lists and defaults:

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
  :data:`~gateway.tls.TLS13_SUITES` (PS3.15 B.10, B.11).

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
from pathlib import Path
from typing import Any, Final

from gateway import identity, sopclasses

#: Where the statement lives, relative to the repository root.
DOCUMENT_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "conformance-statement.md"

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


#: Every generated block by name, in no particular order.
GENERATORS: Final[Mapping[str, Callable[[], str]]] = {
    "identity": render_identity,
    "verification-sop-class": render_verification_sop_class,
    "storage-sop-classes": render_storage_sop_classes,
    "transfer-syntaxes": render_transfer_syntaxes,
    "scu-proposals": render_scu_proposals,
    "configuration-defaults": render_configuration_defaults,
    "tls-profiles": render_tls_profiles,
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


# ---------------------------------------------------------------------------
# The statement's prose (PS3.2 Annex A outline)
# ---------------------------------------------------------------------------

TEMPLATE: Final = """\
# dicom-gateway DICOM Conformance Statement

<!-- This file is generated by `python -m gateway.conformance > docs/conformance-statement.md`
from the prose in gateway/conformance.py and the code's own lists; edit the prose there,
never here. tests/unit/test_conformance.py fails when the two differ. -->

Product: **dicom-gateway**, an open-source DICOM routing gateway (store and forward).
Structure: PS3.2 Annex A (Conformance Statement Sample Outline).

## 1 Conformance Statement Overview

dicom-gateway accepts instances of any standard storage SOP class from modalities and other
senders, writes each one durably to a local spool before acknowledging it, routes it by rules
on its header, optionally changes (morphs) the copy meant for a destination, and forwards it to
one or more destination archives. It has one application entity that is at once a Storage SCP
(towards senders) and a Storage SCU (towards destinations), and supports Verification in both
roles. It does not query, retrieve, print, manage worklists or commit storage.

**Table 1-1 Network services**

| Networking SOP Classes | User of Service (SCU) | Provider of Service (SCP) |
|---|---|---|
| *Transfer* | | |
| Storage SOP Classes (Table 4.2-2) | Yes | Yes |
| *Verification* | | |
| Verification SOP Class | Yes | Yes |

Media interchange: not supported (no DICOM media storage application profile; a folder
destination writes PS3.10 files without a DICOMDIR).

## 2 Table of Contents

1. Conformance Statement Overview
2. Table of Contents
3. Introduction
4. Networking (4.1 Implementation Model, 4.2 AE Specifications, 4.3 Network Interfaces,
   4.4 Configuration)
5. Media Interchange
6. Support of Character Sets
7. Security
8. Annexes

## 3 Introduction

### 3.1 Revision history

The statement describes the source tree it is generated from; the version is the
Implementation Version Name below. Every table marked "generated" is computed from the code by
`python -m gateway.conformance`, and a unit test fails when the document and the code differ.

### 3.2 Audience and remarks

Written for the administrators who connect modalities and archives to the gateway, and for
integrators comparing it with other conformance statements. A conformance statement does not
by itself guarantee interoperability: test each connection. The gateway is a router: it does
not display, interpret or compress images, and it never decodes Pixel Data.

### 3.3 Terms and abbreviations

AE (Application Entity), ARTIM (Association Request/Reject/Release Timer, PS3.8 9.1.5),
DIMSE (DICOM Message Service Element), PDU (Protocol Data Unit), RJ (A-ASSOCIATE-RJ with its
result, source, reason), SCP/SCU (Service Class Provider/User), spool (the local durable store
of received instances), dead letter (an instance set aside after a permanent failure, kept for
an operator), route (a configured rule: which instances go to which destinations).

### 3.4 References

PS3.2 (Conformance), PS3.4 Annex A (Verification) and Annex B (Storage), PS3.5 (Data
Structures and Encoding), PS3.7 (Message Exchange), PS3.8 (Network Communication Support),
PS3.10 (Media Storage and File Format), PS3.15 (Security Profiles), BCP 195 (RFC 7525,
RFC 9325), the project's `README.md` and `../shared/HARDENING.md` decisions cited here.

## 4 Networking

### 4.1 Implementation Model

#### 4.1.1 Application Data Flow

```
  Sender (modality,      C-STORE / C-ECHO     +-----------------------+
  workstation, PACS) ------------------------>|                       |      local spool
                                              |   GATEWAY AE          |----> (fsync'd PS3.10
  Operator / monitor    C-ECHO (CLI)          |   Storage SCP + SCU   |       files, journal)
  (dicom-gateway echo) ---------------------->|   Verification SCP+SCU|
                                              |                       |      C-STORE / C-ECHO
                                              |                       |-----------------------> Destination
                                              +-----------------------+                         archives
```

- **Receive**: a remote AE sends instances; the GATEWAY AE stores each durably in the spool
  and acknowledges it (Storage SCP). C-ECHO requests are answered (Verification SCP).
- **Route and forward**: each received instance is matched against the routes; one queue
  entry per destination is journaled in the same transaction before the acknowledgement. A
  worker per destination sends the queued instances (Storage SCU) and probes a destination
  that is down with C-ECHO (Verification SCU). Folder destinations receive PS3.10 files
  instead (not a DICOM network service).

#### 4.1.2 Functional Definition of AEs

The **GATEWAY AE** (one AE title, `ae_title`, on every listener) listens on the configured TCP
ports (plain or TLS). For every A-ASSOCIATE-RQ it applies the access policy (4.2.1.4), then
negotiates presentation contexts. On a Storage context it streams each C-STORE data set to a
temporary file as the fragments arrive (memory does not grow with instance size), checks its
structure and its SOP Class and Instance UIDs against the command, makes it durable, matches
the routes and journals the queue entries, and only then answers. The forwarding side runs
independently: it opens associations to each destination, sends the spooled bytes (or a
morphed copy), and interprets each C-STORE-RSP status (4.2.1.3.3).

#### 4.1.3 Sequencing of Real-World Activities

An instance is acknowledged (C-STORE-RSP) before it is forwarded: a sender never waits for a
destination. The order of operations before the success status 0x0000 is fixed
(HARDENING decision 10): `fsync(file)`, rename into place, `fsync(directory)`, commit of the
queue journal, then the response. Instances of one study go to a destination through one
association slot, oldest first, so they arrive in the order received. Forwarding of an
instance starts as soon as its journal entry is committed and a destination slot is free.

### 4.2 AE Specifications

#### 4.2.1 GATEWAY AE

##### 4.2.1.1 SOP Classes

The GATEWAY AE provides Standard Conformance to the following SOP classes as both SCU and SCP.
The storage list (generated) is every PS3.6 storage SOP class, retired ones included because
old modalities still send them, without Storage Commitment and Media Storage Directory
Storage, which are not instance storage. With `accept.unknown_sop_classes: true` any other
abstract syntax (a private storage class) is also accepted as SCP and forwarded unchanged as
SCU; that is outside this statement's standard conformance.

**Table 4.2-1 Verification SOP Class** (generated)

@@GENERATED verification-sop-class@@

**Table 4.2-2 Storage SOP Classes** (generated)

@@GENERATED storage-sop-classes@@

##### 4.2.1.2 Association Policies

###### 4.2.1.2.1 General

The DICOM Application Context Name is the only one proposed and accepted:

| Application Context Name | `1.2.840.10008.3.1.1.1` |
|---|---|

The Maximum PDU length announced is `limits.max_pdu_length` as SCP and
`destinations.NAME.max_pdu_length` as SCU (defaults in 4.4.2). The gateway
sends P-DATA-TF PDUs no larger than the peer announced; a peer that announces 0 (no limit)
still gets PDUs no larger than our own cap, and a peer that sends no Maximum Length sub-item
gets PDUs of at most 16 KiB (HARDENING decision 2). A peer announcing a non-zero maximum below
1024 bytes is rejected (RJ 1, 1, 1).

###### 4.2.1.2.2 Number of Associations

| Role | Maximum number of simultaneous associations |
|---|---|
| Acceptor (SCP) | `limits.max_associations` in total over all listeners (defaults in 4.4.2) |
| Initiator (SCU) | `destinations.NAME.max_associations` per destination |

The association beyond the acceptor limit is rejected at once with A-ASSOCIATE-RJ transient,
source service-provider (presentation), reason local-limit-exceeded (RJ 2, 3, 2; PS3.8 9.3.4),
never by resetting the connection. While the spool's filesystem is below its free-space floor,
new associations are rejected RJ 2, 3, 1 (temporary congestion), so senders keep their copies
and retry.

###### 4.2.1.2.3 Asynchronous Nature

Not supported: one operation at a time, in both roles. An Asynchronous Operations Window
sub-item proposed to the SCP is answered 1/1 (PS3.7 D.3.3.3); the SCU proposes none. A peer
that sends more requests without waiting is still answered, one at a time and in order.

###### 4.2.1.2.4 Implementation Identifying Information (generated)

Sent in every A-ASSOCIATE-RQ and A-ASSOCIATE-AC (PS3.7 D.3.3.2). The class UID is a `2.25`
UUID-derived UID (PS3.5 B.2); the version name changes with the release.

@@GENERATED identity@@

##### 4.2.1.3 Association Initiation Policy

###### 4.2.1.3.1 Activity: Forward Instances to a Destination

**Description and sequencing.** A worker per destination leases up to `batch_size` queued
instances, reuses its open association when it carries contexts for them and has sent fewer
than `batch_size` instances, or else opens a new one, proposing one context per (SOP class,
transfer syntax) of the batch (at most 128). After `batch_size` instances, or `idle_release`
seconds without work, the association is released (A-RELEASE); if the destination does not
answer the release within `acse_timeout` it is aborted. An association that failed mid-send is
aborted and never reused.

**Proposed presentation contexts.** Every association proposes Verification; each storage
instance gets a context with exactly its original transfer syntax, so the bytes received are
the bytes sent whenever the destination accepts them. An instance in a native syntax that the
gateway can re-encode (Implicit VR LE, Explicit VR LE and Big Endian) also gets a second context
for its SOP class offering Explicit, then Implicit VR Little Endian, less the original (every
Storage SCP accepts Implicit VR Little Endian, PS3.4 B.4.1); it is used only if
the original syntax is refused, after re-encoding the data set (values unchanged). Encapsulated
(compressed) and deflated instances are never decompressed or recompressed. Role: SCU on every
context; no SCP/SCU Role Selection and no extended negotiation are proposed. Example for a CT
Image Storage instance (generated from the forwarder's own function):

@@GENERATED scu-proposals@@

An instance with no accepted context (SOP class or transfer syntax refused, and no usable
fallback) is dead-lettered for that destination; other instances continue.

###### 4.2.1.3.2 SOP Specific Conformance: Verification SCU

C-ECHO is sent to probe a destination whose circuit is open (after `circuit.failures`
consecutive destination-wide failures), and by the `dicom-gateway echo` command. A success
status closes the circuit; any other outcome keeps it open.

###### 4.2.1.3.3 SOP Specific Conformance: Storage SCU

The data set is streamed from the spool file. Each C-STORE-RSP status is handled per class
(PS3.7 Annex C, PS3.4 Table B.2-1):

| Status | Meaning | Behaviour |
|---|---|---|
| 0x0000 | Success | delivered |
| 0xBxxx (e.g. 0xB000, 0xB006, 0xB007), 0x0001, 0x0107, 0x0116 | Warning | delivered; the warning is logged, kept as the entry's last error and counted (`delivered_with_warning_total`) |
| 0xA7xx | Refused: out of resources | retried with exponential backoff |
| 0xFE00 | Cancel | retried |
| 0xA9xx | Error: data set does not match SOP class | dead-lettered at once (re-sending the same bytes cannot succeed) |
| 0xCxxx | Error: cannot understand | dead-lettered at once |
| 0x01xx, 0x02xx (e.g. 0x0122, 0x0124, 0x0211) | Failure | dead-lettered at once |
| any other code | unknown | retried up to `retry.unknown_status_attempts` attempts, then dead-lettered with the code |

Retries back off exponentially with jitter (`retry.initial_delay` to `retry.max_delay`) up to
`retry.max_attempts` attempts or `retry.max_age`, then the instance is dead-lettered; dead
letters are kept for an operator to retry or purge. Faults of the destination as a whole
(connection refused or timed out, A-ASSOCIATE-RJ permanent or transient, A-ABORT before the
data went out, TLS verification failure) count no attempt: after `circuit.failures` of them the
destination's circuit opens and every queued instance is kept (HARDENING decision 9). A send
whose outcome is unknown (no response within `dimse_timeout`, or the association ended after
the data set went out) is retried; the destination may then receive the instance twice
(at-least-once delivery), which is counted.

**Coercion.** None, unless a route morphs the destination's copy (its configuration says which
attributes change: set, copy, delete, UID remapping, de-identification). Morphing happens after
the acknowledgement, on the copy for that route's destinations only; a morph that fails
dead-letters that copy and nothing unmorphed is sent.

##### 4.2.1.4 Association Acceptance Policy

###### 4.2.1.4.1 Activity: Receive Instances and Verification Requests

**Description and sequencing.** Any number of senders may associate, up to the limit
(4.2.1.2.2). Rejections, in this order:

| Condition | A-ASSOCIATE-RJ (result, source, reason) |
|---|---|
| Protocol version without bit 0 (PS3.8 9.3.2; only bit 0 is tested) | 1, 2, 2 |
| Application context name not the DICOM one | 1, 1, 2 |
| No presentation context item, or a Maximum Length below 1024 | 1, 1, 1 |
| Called AE title not ours (compared without leading/trailing spaces, case-sensitive) | 1, 1, 7 |
| Calling AE title invalid, not allowed by `accept.calling_ae_titles` or the listener's list, or not bound to the TLS client certificate | 1, 1, 3 |
| Peer address outside the listener's `access.networks` | 1, 1, 1 |
| User identity absent when required, or not verified (PS3.7 D.3.3.7) | 1, 1, 1 |
| User identity with a passcode while the passcode checks' queue is full (answered after 1 s) | 2, 3, 2 |
| User identity not decided within `limits.acse_timeout` | 2, 3, 1 |
| Spool below its free-space floor | 2, 3, 1 |
| `limits.max_associations` associations already open | 2, 3, 2 |

An association is accepted even if none of its presentation contexts is acceptable; each
context's result says why, and the peer decides to release (HARDENING decision 2). No
A-ASSOCIATE-RQ arriving within `limits.acse_timeout` (ARTIM) after the connection opens, or no
PDU for `limits.network_timeout` on an open association, ends the connection (A-ABORT on an
association). A malformed or unexpected PDU gets A-ABORT (source 2, reason 1, 2 or 6); a
violation of DIMSE message encapsulation gets A-ABORT (0, 0). An A-RELEASE-RQ is always
answered with A-RELEASE-RP once the pending responses are sent.

**Accepted presentation contexts.** Abstract syntaxes: Verification and every storage SOP
class of Table 4.2-2. Transfer syntaxes: those of Table 4.2-3. Role: SCP. Extended
negotiation: none (SOP Class Extended and Common Extended Negotiation sub-items are read and
not answered, PS3.7 D.3.3.5-D.3.3.6).

Per proposed context (PS3.8 Table 9-18): an abstract syntax not supported gets result 3; no
acceptable transfer syntax, result 4; a context for which the requestor proposed only the SCP
role through SCP/SCU Role Selection, result 1 (user rejection), since the gateway only acts as
SCP; otherwise acceptance, with **the first transfer syntax in the requestor's list that the
gateway accepts**, so the sender's own encoding (compressed or not) is kept. A proposed
requestor SCU role is echoed, a proposed requestor SCP role is declined (PS3.7 D.3.3.4).

**Table 4.2-3 Transfer Syntaxes accepted for every storage SOP class** (generated).
Verification is accepted with the same list.

@@GENERATED transfer-syntaxes@@

###### 4.2.1.4.2 SOP Specific Conformance: Verification SCP

A C-ECHO-RQ on a Verification context is answered 0x0000 (PS3.4 A.4).

###### 4.2.1.4.3 SOP Specific Conformance: Storage SCP

Level of support: Level 2 (Full) (PS3.4 B.4.1): every attribute, Type 3 and private ones
included, is kept byte for byte. The stored file is a PS3.10 File Meta Information header
generated by the gateway (zero preamble) followed by every data set byte as received. The IOD
(attribute presence and values) is not checked beyond the structure and the UIDs below, and
instances are not interpreted clinically. Digital signatures are kept unchanged, not verified
(a morph that changes signed attributes invalidates them).

**Durability guarantee.** The status 0x0000 is sent only after the instance file is fsync'd,
renamed into the spool, the directory fsync'd and the queue journal committed. After a crash
or power loss, every instance acknowledged with 0x0000 is in the spool and will be forwarded;
an instance whose response was not sent may have been kept too (the sender's re-send is then a
duplicate, below). Responses leave in the order of the requests.

**Statuses returned** (PS3.4 Table B.2-1, PS3.7 Annex C):

| Status | Meaning | When |
|---|---|---|
| 0x0000 | Success | the instance is durably stored and journaled (including duplicates, instances a `drop` route discards, and instances no route matches, which are kept aside in the spool) |
| 0xA700 | Refused: Out of Resources | the spool is below its free-space floor, a write or fsync failed, or the queue journal could not be committed; nothing is kept, the sender should retry later |
| 0xA900 | Error: Data Set does not match SOP Class | the data set's SOP Class UID or SOP Instance UID differs from the command's |
| 0xC000 | Error: Cannot understand | the data set is malformed (element lengths, sequences, encapsulation), lacks a SOP Class or Instance UID, is larger than `limits.max_instance_size`, or the C-STORE-RQ carried no data set |
| 0x0122 | Refused: SOP Class not supported | the command's Affected SOP Class UID differs from the presentation context's abstract syntax (the data set is read and discarded) |
| 0x0211 | Unrecognized operation | any other DIMSE request (C-FIND, C-GET, C-MOVE, N-*) on an accepted context; the association continues |
| (configured) | a route's `reject: STATUS` | an instance matching a rejecting route gets that failure status (the configuration only allows failure codes) |

No warning status (0xB000, 0xB006, 0xB007) is ever returned: nothing is coerced or discarded
at reception. Failures of C-STORE carry an Error Comment (0000,0902) saying why.

**Instances over the maximum size.** An instance whose data set exceeds
`limits.max_instance_size` (4.4.2) is read to its end without being written and
answered 0xC000 with the comment "Instance larger than N bytes". The failure is deliberately
permanent, so that the sender does not retry it forever (HARDENING decision 8).

**Duplicates.** An instance re-sent with the same SOP Instance UID and identical bytes within
`duplicates.window` (4.4.2) is answered 0x0000 and not forwarded again to a
destination that already has it (counted). With other bytes, or after the window, it is
forwarded again: re-sending a study to repair an archive is never ignored (HARDENING
decision 5).

**Coercion.** None: the SCP never changes an element of the stored instance. Only a route's
morph changes the copy forwarded to that route's destinations (4.2.1.3.3). Non-conformant UIDs
are accepted and stored; no file name is derived from peer data.

**Storage duration.** Instances stay in the spool until every destination has them (or, with
`retention.keep_delivered`, for that long afterwards, for replays); dead letters are kept until
an operator purges them.

### 4.3 Network Interfaces

#### 4.3.1 Physical network interface

Any interface of the host; the gateway uses the operating system's TCP/IP stack (PS3.8 9).

#### 4.3.2 Additional protocols

None for DICOM. An HTTP endpoint (metrics, health, administration API; loopback by default)
and syslog over TLS for the audit trail (RFC 5425) are optional and outside DICOM.

#### 4.3.3 IPv4 and IPv6 support

Both: listeners bind any IPv4 or IPv6 address (`0.0.0.0`, `::`), destinations may be IPv6
addresses or host names. No IPv6-specific behaviour (no DHCP, no DNS-SD).

#### 4.3.4 TLS (PS3.15 Annex B)

A listener or destination may use TLS with one of two Secure Transport Connection Profiles.
SSLv3, TLS 1.0 and TLS 1.1 are always refused whatever the OpenSSL configuration; TLS
compression and renegotiation are disabled. The plain BCP 195 profile (PS3.15 B.9, which allows
downgrading) is deliberately not offered. There is no fallback from TLS to plain TCP. Listener
certificates are renewed on SIGHUP without dropping associations. Profiles (generated):

@@GENERATED tls-profiles@@

### 4.4 Configuration

#### 4.4.1 AE Title/Presentation Address Mapping

- Local: `ae_title` is the AE title of the GATEWAY AE on every listener and, by default, the
  calling AE title towards destinations (`destinations.NAME.calling_ae_title` overrides it).
  Listeners: `listen: [{host, port, tls?}]`; 11112 (plain) and 2762 (TLS) are the conventional
  ports (2762 is the IANA-registered port for DICOM over TLS).
- Remote: each DICOM destination has `ae_title`, `host`, `port` and optionally `tls`. Remote
  senders need no configuration unless `accept.calling_ae_titles` or a listener's `access`
  restricts them.

#### 4.4.2 Parameters (generated defaults)

@@GENERATED configuration-defaults@@

## 5 Media Interchange

Not supported. Folder destinations write each instance as a PS3.10 file under a configured
path pattern, atomically, without a DICOMDIR: this is export for other software, not a DICOM
File-set.

## 6 Support of Character Sets

The gateway neither converts nor checks character sets: every byte of a received instance is
kept and forwarded as received, whatever its Specific Character Set (0008,0005), including
ISO 2022 escapes and invalid encodings. Routing rules read text with the instance's Specific
Character Set (as decoded by pydicom, PS3.5 6.1); a value that cannot be decoded never matches
a pattern, deterministically. A morph that writes text requires it to be encodable in the
instance's character set (the default repertoire when (0008,0005) is absent); otherwise the
morph fails and that copy is dead-lettered instead of being sent with wrong bytes. AE titles
must use the default repertoire without backslash or control characters (PS3.5 6.2).

## 7 Security

### 7.1 Security Profiles

The Non-Downgrading BCP 195 (PS3.15 B.10, the default) and Extended BCP 195 (PS3.15 B.11) TLS
Secure Transport Connection Profiles, on listeners and destinations (4.3.4). A listener may
require a client certificate signed by its CA; a destination's server certificate must chain
to its configured CA and carry its name (RFC 6125). Failed handshakes are logged and audited
with a reason (unknown CA, expired, not yet valid, revoked (with `listen[i].tls.crl`), wrong key
usage, weak key or signature, no shared cipher, protocol version, not TLS, oversized, timeout, ...)
and counted in `dicom_gateway_tls_handshake_failures_total{listener,reason}`. Keys under 2048
bits and MD5/SHA-1 signatures are refused both ways (OpenSSL security level 2).

### 7.2 Association Level Security

- Access control per association: called AE title, calling AE title patterns (global and per
  listener), source networks (CIDR), and on TLS listeners a binding of certificate subjects to
  the calling AE titles they may use, so a borrowed AE title alone does not get in (4.2.1.4.1).
  Subjects are matched attribute by attribute (a glob per value, never over the RFC 4514
  string), optionally with a pattern the issuer must match.
- User Identity Negotiation (PS3.7 D.3.3.7) as acceptor, per listener: `off` (ignored),
  `optional` (checked when given) or `required`. User name and user name + passcode are checked
  against a file of salted scrypt hashes; a user name alone (type 1) only for users written
  without a passcode. Kerberos, SAML and JWT assertions are refused unless a verifier plugin
  accepts them. Passcode checks run off the network thread, a bounded number at a time. A
  positive response (sub-item 0x59) is returned when requested, and only then. The gateway
  proposes no user identity as requestor.

### 7.3 Application Level Security

An audit trail, shaped after the PS3.15 A.5.3 audit messages, records application start, stop
and reload, accepted associations and user identity checks (User Authentication), rejected
associations, access-control denials and TLS failures (Security Alert), and every instance
received, forwarded, dead-lettered or dropped (DICOM Instances Transferred) or written to a
folder (Data Export). It is written as JSON lines (mode 0600) and optionally sent as syslog over
TLS. Patient identifiers appear only there, never in logs or metric labels. The stored file
always has a zero preamble (CVE-2019-11687). The HTTP administration API may require a bearer
token.

## 8 Annexes

### 8.1 IOD Contents

Not applicable: the gateway creates no SOP instances. It stores and forwards instances created
by others; a route's morph may modify the forwarded copy as configured.

### 8.2 Data Dictionary of Private Attributes

None defined. Private elements are kept as received (a morph may remove them).

### 8.3 Coded Terminology and Templates

None used.

### 8.4 Grayscale Image Consistency

Not applicable.

### 8.5 Standard Extended, Specialized and Private SOP Classes

None. Private SOP classes are stored and forwarded unchanged only with
`accept.unknown_sop_classes: true`.

### 8.6 Private Transfer Syntaxes

None.
"""


if __name__ == "__main__":
    raise SystemExit(main())
