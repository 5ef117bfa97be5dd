"""The PS3.8 state table, checked cell by cell against an independent transcription.

``data/ps3.8-state-table.csv`` (one row per defined cell of Table 9-10) and
``data/ps3.8-actions.csv`` (each action's next state, Tables 9-6 to 9-9) were
transcribed separately from :mod:`gateway.ul.machine`; these tests compare the
two and then *run* every cell through :class:`~gateway.ul.association.Association`
to check the state it lands in.
"""

from __future__ import annotations

import csv
import os
from itertools import product

from twisted.trial.unittest import SynchronousTestCase

from gateway.ul import pdu
from gateway.ul.actions import Role, ULSettings
from gateway.ul.association import Association
from gateway.ul.errors import AbortReason, LocalProtocolError
from gateway.ul.machine import LOCAL_EVENTS, TRANSITIONS, Action, Event, State
from gateway.ul.outputs import (
    AbortIndication,
    AssociateIndication,
    CloseTransport,
    ReleaseIndication,
    Send,
    StartArtim,
)

_HERE = os.path.dirname(__file__)


def _read_csv(name: str) -> list[dict[str, str]]:
    with open(os.path.join(_HERE, "data", name), newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


TABLE = {(row["state"], row["event"]): row["action"] for row in _read_csv("ps3.8-state-table.csv")}
NEXT = {row["action"]: row["next_state"].split("|") for row in _read_csv("ps3.8-actions.csv")}

RQ = pdu.AAssociateRQ(
    called_ae_title="DICOMGW",
    calling_ae_title="MODALITY",
    presentation_contexts=(pdu.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    user_information=None,
)
AC = pdu.AAssociateAC(
    called_ae_title="DICOMGW",
    calling_ae_title="MODALITY",
    presentation_contexts=(pdu.PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
    user_information=None,
)
RJ = pdu.AAssociateRJ(result=1, source=1, reason=7)
PDATA = pdu.PDataTF((pdu.PDV(1, 0x03, b"\x00\x00"),))

#: The bytes a peer sends to cause each remote PDU event.
REMOTE_BYTES = {
    Event.EVT3: lambda: pdu.encode(AC),
    Event.EVT4: lambda: pdu.encode(RJ),
    Event.EVT6: lambda: pdu.encode(RQ),
    Event.EVT10: lambda: pdu.encode(PDATA),
    Event.EVT12: lambda: pdu.encode(pdu.AReleaseRQ()),
    Event.EVT13: lambda: pdu.encode(pdu.AReleaseRP()),
    Event.EVT16: lambda: pdu.encode(pdu.AAbort(0, 0)),
    Event.EVT19: lambda: b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00",
}


def _association_in(state: State, role: Role) -> Association:
    """An association forced into ``state`` with the context a real one would have there."""
    assoc = Association(role, ULSettings(artim_timeout=5.0))
    assoc._ctx.request = RQ
    assoc._ctx.accepted_context_ids = frozenset({1})
    assoc._ctx.artim_running = state in (State.STA2, State.STA13)
    assoc._state = state
    return assoc


def _fire(assoc: Association, event: Event) -> list[object]:
    """Deliver ``event`` to ``assoc`` through its public interface."""
    if event in REMOTE_BYTES:
        return list(assoc.receive_data(REMOTE_BYTES[event]()))
    calls = {
        Event.EVT1: lambda: assoc.request(RQ),
        Event.EVT2: assoc.transport_connected,
        Event.EVT5: assoc.transport_connected,
        Event.EVT7: lambda: assoc.accept(AC),
        Event.EVT8: lambda: assoc.reject(RJ),
        Event.EVT9: lambda: assoc.send_pdata(PDATA.pdvs),
        Event.EVT11: assoc.release,
        Event.EVT14: assoc.release_response,
        Event.EVT15: assoc.abort,
        Event.EVT17: assoc.transport_closed,
        Event.EVT18: assoc.artim_expired,
    }
    return list(calls[event]())


def _role_for(event: Event, state: State) -> Role:
    """Evt2 exists only for a requestor and Evt5 only for an acceptor; others work with either."""
    if event is Event.EVT5:
        return Role.ACCEPTOR
    if event in (Event.EVT1, Event.EVT2, Event.EVT3, Event.EVT4) or state in (State.STA4, State.STA5):
        return Role.REQUESTOR
    return Role.ACCEPTOR


class TransitionTableTests(SynchronousTestCase):
    """TRANSITIONS agrees with the independent transcription of Table 9-10."""

    def test_every_defined_cell_names_the_same_action(self) -> None:
        """Each defined cell of the CSV maps to the same action in TRANSITIONS, and no extra cells exist."""
        ours = {(s.value, e.value): a.value for (s, e), a in TRANSITIONS.items()}
        self.assertEqual(ours, TABLE)

    def test_every_action_has_a_next_state_in_the_actions_table(self) -> None:
        """Every action enum member appears in the independent actions table."""
        self.assertEqual({a.value for a in Action}, set(NEXT))

    def test_there_are_13_states_and_19_events(self) -> None:
        """The enums have exactly the standard's 13 states and 19 events."""
        self.assertEqual(len(State), 13)
        self.assertEqual(len(Event), 19)


class EveryCellTests(SynchronousTestCase):
    """Running each (state, event) pair lands where the standard says, or fails as it should."""

    def test_every_cell(self) -> None:
        """For all 13 x 19 pairs: defined cells reach the table's next state; empty cells raise or do nothing."""
        for state, event in product(State, Event):
            role = _role_for(event, state)
            assoc = _association_in(state, role)
            key = (state.value, event.value)
            if key not in TABLE:
                if event in LOCAL_EVENTS:
                    self.assertRaises(LocalProtocolError, _fire, assoc, event) if not (
                        event is Event.EVT15 and state in (State.STA1, State.STA2, State.STA13)
                    ) else self.assertEqual(_fire(assoc, event), [], key)
                else:
                    self.assertEqual(_fire(assoc, event), [], key)
                self.assertIs(assoc.state, state, key)
                continue
            _fire(assoc, event)
            expected = NEXT[TABLE[key]]
            if len(expected) == 1:
                self.assertEqual(assoc.state.value, expected[0], key)
            else:
                self.assertIn(assoc.state.value, expected, key)

    def test_ae6_goes_to_sta3_when_the_provider_accepts(self) -> None:
        """AE-6 issues an A-ASSOCIATE indication and moves to Sta3 for an acceptable request."""
        assoc = _association_in(State.STA2, Role.ACCEPTOR)
        outputs = _fire(assoc, Event.EVT6)
        self.assertIs(assoc.state, State.STA3)
        self.assertIn(AssociateIndication(RQ), outputs)

    def test_ae6_goes_to_sta13_with_an_rj_when_the_provider_refuses(self) -> None:
        """AE-6 sends the provider's A-ASSOCIATE-RJ, starts ARTIM and moves to Sta13."""
        refusal = pdu.AAssociateRJ(2, 3, 2)
        assoc = Association(Role.ACCEPTOR, ULSettings(artim_timeout=7.0, provider_check=lambda rq: refusal))
        assoc.transport_connected()
        outputs = assoc.receive_data(pdu.encode(RQ))
        self.assertIs(assoc.state, State.STA13)
        self.assertIn(Send(pdu.encode(refusal)), outputs)
        self.assertIn(StartArtim(7.0), outputs)

    def test_release_collision_as_requestor_moves_to_sta9(self) -> None:
        """AR-8 moves the association-requestor to Sta9."""
        assoc = _association_in(State.STA7, Role.REQUESTOR)
        outputs = _fire(assoc, Event.EVT12)
        self.assertIs(assoc.state, State.STA9)
        self.assertIn(ReleaseIndication(collision=True), outputs)

    def test_release_collision_as_acceptor_moves_to_sta10(self) -> None:
        """AR-8 moves the association-acceptor to Sta10."""
        assoc = _association_in(State.STA7, Role.ACCEPTOR)
        _fire(assoc, Event.EVT12)
        self.assertIs(assoc.state, State.STA10)


class BehaviourTests(SynchronousTestCase):
    """Outcomes of the table that HARDENING.md pins."""

    def _established(self) -> Association:
        assoc = Association(Role.ACCEPTOR, ULSettings(artim_timeout=3.0, max_pdu_length=16384))
        assoc.transport_connected()
        assoc.receive_data(pdu.encode(RQ))
        assoc.accept(AC)
        self.assertIs(assoc.state, State.STA6)
        return assoc

    def test_connect_starts_artim(self) -> None:
        """AE-5: a new transport connection starts ARTIM (HARDENING P01)."""
        assoc = Association(Role.ACCEPTOR, ULSettings(artim_timeout=4.0))
        self.assertEqual(assoc.transport_connected(), [StartArtim(4.0)])
        self.assertEqual(assoc.artim_expired(), [CloseTransport()])
        self.assertIs(assoc.state, State.STA1)

    def test_http_request_in_sta2_aborts_with_unrecognised_pdu(self) -> None:
        """Evt19 in Sta2 (an HTTP request) sends A-ABORT(2,1) (HARDENING P03, R3)."""
        assoc = Association(Role.ACCEPTOR)
        assoc.transport_connected()
        outputs = assoc.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIs(assoc.state, State.STA13)
        self.assertIn(Send(pdu.encode(pdu.AAbort(2, AbortReason.UNRECOGNIZED_PDU))), outputs)

    def test_second_rq_in_sta6_is_aa8_unexpected_pdu(self) -> None:
        """A second A-ASSOCIATE-RQ in Sta6 is AA-8 with reason 2 (HARDENING P26)."""
        assoc = self._established()
        outputs = assoc.receive_data(pdu.encode(RQ))
        self.assertIs(assoc.state, State.STA13)
        self.assertIn(Send(pdu.encode(pdu.AAbort(2, AbortReason.UNEXPECTED_PDU))), outputs)
        self.assertTrue(any(isinstance(o, AbortIndication) and o.local for o in outputs))

    def test_pdata_on_unaccepted_context_aborts(self) -> None:
        """A PDV on a context that was not accepted is A-ABORT(2,6) (HARDENING P23)."""
        assoc = self._established()
        bad = pdu.PDataTF((pdu.PDV(3, 0x03, b"\x00\x00"),))
        outputs = assoc.receive_data(pdu.encode(bad))
        self.assertIn(Send(pdu.encode(pdu.AAbort(2, AbortReason.INVALID_PDU_PARAMETER_VALUE))), outputs)

    def test_pdata_above_max_length_aborts(self) -> None:
        """A P-DATA-TF longer than we advertised is A-ABORT(2,6) (HARDENING P20)."""
        assoc = self._established()
        header = b"\x04\x00" + (16385).to_bytes(4, "big")
        outputs = assoc.receive_data(header)
        self.assertIn(Send(pdu.encode(pdu.AAbort(2, AbortReason.INVALID_PDU_PARAMETER_VALUE))), outputs)
        self.assertLess(assoc.buffered, 16)

    def test_release_then_peer_never_closes(self) -> None:
        """A-RELEASE-RQ, our RP, then ARTIM closes the connection (HARDENING P30)."""
        assoc = self._established()
        self.assertEqual(assoc.receive_data(pdu.encode(pdu.AReleaseRQ())), [ReleaseIndication()])
        outputs = assoc.release_response()
        self.assertEqual(outputs, [Send(pdu.encode(pdu.AReleaseRP())), StartArtim(3.0)])
        self.assertEqual(assoc.artim_expired(), [CloseTransport()])

    def test_pdata_after_own_release_request_is_aa8(self) -> None:
        """P-DATA after the peer's own A-RELEASE-RQ (Sta8) is AA-8 (HARDENING P31)."""
        assoc = self._established()
        assoc.receive_data(pdu.encode(pdu.AReleaseRQ()))
        outputs = assoc.receive_data(pdu.encode(PDATA))
        self.assertIs(assoc.state, State.STA13)
        self.assertIn(Send(pdu.encode(pdu.AAbort(2, AbortReason.UNEXPECTED_PDU))), outputs)

    def test_pdata_after_our_abort_is_ignored(self) -> None:
        """After our A-ABORT, further P-DATA is ignored until ARTIM (HARDENING P36, AA-6)."""
        assoc = self._established()
        assoc.abort()
        self.assertEqual(assoc.receive_data(pdu.encode(PDATA)), [])
        self.assertIs(assoc.state, State.STA13)

    def test_byte_at_a_time_association(self) -> None:
        """An A-ASSOCIATE-RQ fed one byte at a time yields exactly one indication."""
        assoc = Association(Role.ACCEPTOR)
        assoc.transport_connected()
        data = pdu.encode(RQ)
        outputs: list[object] = []
        for i in range(len(data)):
            outputs.extend(assoc.receive_data(data[i : i + 1]))
        self.assertEqual([o for o in outputs if isinstance(o, AssociateIndication)], [AssociateIndication(RQ)])

    def test_local_primitive_in_wrong_state_raises(self) -> None:
        """A P-DATA request before the association exists is a LocalProtocolError."""
        assoc = Association(Role.ACCEPTOR)
        self.assertRaises(LocalProtocolError, assoc.send_pdata, PDATA.pdvs)
        self.assertIs(assoc.state, State.STA1)
