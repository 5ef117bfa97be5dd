"""A scriptable pynetdicom Storage SCP that records every C-STORE it receives.

DCMTK ``storescp`` overwrites a file when the same SOP Instance UID arrives
twice, so it cannot count duplicates, and it cannot be told to misbehave.
:class:`RecordingScp` runs a pynetdicom AE in a background thread of the test
process (pynetdicom is a test-only peer, never used inside ``gateway/``) and:

- records every C-STORE request as a :class:`Receipt` (SOP Instance UID,
  SHA-256 of the data set bytes exactly as received, association number), so a
  test can count deliveries and duplicates per instance;
- answers a status chosen by a script: ``status_for(uid, attempt)`` returns the
  C-STORE status for the ``attempt``-th receipt of ``uid`` (1-based), e.g. 0xA700
  (out of resources, PS3.4 Annex B.2.3) for the first two, then 0x0000;
- sends an A-ABORT instead of a response on chosen receipts (``abort_on``: the
  1-based ordinal numbers of receipts across the SCP's lifetime), after
  recording them: the data reached the archive but the sender never learns
  it, which is the ambiguous outcome that may cause a counted duplicate;
- accepts only the abstract syntaxes it is given (default: CT Image Storage and
  Verification), so "no accepted presentation context" can be provoked;
- checks the called AE title (``require_called_aet``), so a sender using a
  wrong title is rejected permanent (A-ASSOCIATE-RJ 1, 1, 7; PS3.8 7.1.1.9).

The SCP keeps its port across :meth:`RecordingScp.stop` / :meth:`start`, so
a test can "fix" a destination by restarting it with other settings.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests.support.ports import free_port

__all__ = ["Receipt", "RecordingScp", "VERIFICATION"]

#: The Verification SOP Class (C-ECHO, PS3.4 Annex A); the gateway's circuit probe.
VERIFICATION: str = "1.2.840.10008.1.1"

#: Transfer syntaxes accepted for every abstract syntax: the uncompressed ones.
_TRANSFER_SYNTAXES: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                 ExplicitVRBigEndian]


@dataclass(frozen=True)
class Receipt:
    """One C-STORE request as the SCP received it.

    :param sop_instance_uid: Affected SOP Instance UID of the request.
    :param sop_class_uid: Affected SOP Class UID of the request.
    :param digest: SHA-256 hex digest of the data set bytes as received.
    :param size: length of the data set bytes.
    :param association: ordinal number of the association that carried it (1-based).
    :param status: the status answered (``None`` when the SCP aborted instead).
    """

    sop_instance_uid: str
    sop_class_uid: str
    digest: str
    size: int
    association: int
    status: int | None


def _always_success(uid: str, attempt: int) -> int:
    """Answer Success (0x0000) to everything.

    :param uid: unused.
    :param attempt: unused.
    :returns: 0x0000.
    """
    return 0x0000


class RecordingScp:
    """A pynetdicom Storage SCP on a loopback port that records and misbehaves on demand.

    :param ae_title: the SCP's AE title.
    :param abstract_syntaxes: SOP classes accepted (Verification is always added
        unless ``echo`` is false).
    :param status_for: ``(sop_instance_uid, attempt) -> status`` for each receipt.
    :param abort_on: ordinal numbers (1-based, across all associations) of
        receipts answered with an A-ABORT instead of a response.
    :param require_called_aet: reject associations whose called AE title is not ``ae_title``.
    :param echo: accept the Verification SOP Class (C-ECHO).
    :param port: the port (a free one by default); kept across restarts.
    :param ssl_context: a server-side :class:`ssl.SSLContext`: the SCP then
        speaks DICOM over TLS (pynetdicom's own TLS support, PS3.15 B.9-B.11).
    """

    def __init__(
        self,
        ae_title: str = "RECORDER",
        *,
        abstract_syntaxes: Iterable[str] = (CTImageStorage,),
        status_for: Callable[[str, int], int] = _always_success,
        abort_on: Iterable[int] = (),
        require_called_aet: bool = True,
        echo: bool = True,
        port: int | None = None,
        ssl_context: Any = None,
    ) -> None:
        self.ae_title = ae_title
        self.ssl_context = ssl_context
        self.abstract_syntaxes = [UID(s) for s in abstract_syntaxes]
        self.status_for = status_for
        self.abort_on = frozenset(abort_on)
        self.require_called_aet = require_called_aet
        self.echo = echo
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._lock = threading.Lock()
        self._receipts: list[Receipt] = []
        self._associations = 0
        self._server: Any = None

    # -- what was received ---------------------------------------------------

    @property
    def receipts(self) -> list[Receipt]:
        """Every C-STORE received so far, in arrival order.

        :returns: a copy of the list.
        """
        with self._lock:
            return list(self._receipts)

    def counts(self) -> Counter[str]:
        """Count receipts per SOP Instance UID.

        :returns: ``{uid: times received}``.
        """
        return Counter(r.sop_instance_uid for r in self.receipts)

    def successes(self) -> Counter[str]:
        """Count receipts answered with a success or warning status per UID.

        :returns: ``{uid: times acknowledged}``.
        """
        return Counter(r.sop_instance_uid for r in self.receipts
                       if r.status is not None and (r.status == 0 or r.status >> 12 == 0xB))

    def duplicates(self) -> int:
        """Count receipts beyond the first for each SOP Instance UID.

        :returns: total receipts minus distinct UIDs.
        """
        counts = self.counts()
        return sum(counts.values()) - len(counts)

    @property
    def associations(self) -> int:
        """Count the associations accepted so far.

        :returns: the number.
        """
        with self._lock:
            return self._associations

    # -- handlers (run in pynetdicom's threads) ------------------------------

    def _on_established(self, event: Any) -> None:
        """Number the association.

        :param event: pynetdicom's ``EVT_ESTABLISHED``.
        """
        with self._lock:
            self._associations += 1
            event.assoc.gw_number = self._associations

    def _on_store(self, event: Any) -> int:
        """Record a C-STORE request and answer (or abort) as scripted.

        :param event: pynetdicom's ``EVT_C_STORE``.
        :returns: the status to send.
        """
        request = event.request
        data = request.DataSet.getvalue()
        uid = str(request.AffectedSOPInstanceUID)
        with self._lock:
            attempt = 1 + sum(1 for r in self._receipts if r.sop_instance_uid == uid)
            ordinal = len(self._receipts) + 1
            abort = ordinal in self.abort_on
            status = None if abort else self.status_for(uid, attempt)
            self._receipts.append(Receipt(
                sop_instance_uid=uid,
                sop_class_uid=str(request.AffectedSOPClassUID),
                digest=hashlib.sha256(data).hexdigest(),
                size=len(data),
                association=getattr(event.assoc, "gw_number", 0),
                status=status,
            ))
        if abort:
            # A-ABORT (PS3.8 7.3) after the data arrived: the sender cannot
            # know whether the archive kept the instance.
            event.assoc.abort()
            return 0xA700
        assert status is not None
        return status

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> RecordingScp:
        """Start listening (in background threads).

        :returns: this object.
        """
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.maximum_pdu_size = 262144
        ae.network_timeout = 30
        ae.acse_timeout = 30
        ae.dimse_timeout = 30
        for syntax in self.abstract_syntaxes:
            ae.add_supported_context(syntax, _TRANSFER_SYNTAXES)
        if self.echo:
            ae.add_supported_context(VERIFICATION, _TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_ESTABLISHED, self._on_established)]
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=handlers, ssl_context=self.ssl_context)
        return self

    def stop(self) -> None:
        """Stop listening and abort open associations; safe to call twice.

        pynetdicom's ``shutdown`` only stops accepting: an association the
        gateway keeps open (until ``idle_release``) would still reach the old
        behaviour, so each is aborted, as a restarted archive would.
        """
        server, self._server = self._server, None
        if server is not None:
            for assoc in server.active_associations:
                assoc.abort()
            server.shutdown()

    def __enter__(self) -> RecordingScp:
        """Start the SCP.

        :returns: this object.
        """
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the SCP.

        :param exc_type: unused.
        :param exc: unused.
        :param tb: unused.
        """
        self.stop()
