"""The PS3.8 upper-layer state machine: states, events, and the transition table.

Theory of operation
-------------------

PS3.8 section 9.2 describes the upper layer as a finite state machine with
13 states (``Sta1`` .. ``Sta13``, Table 9-10's columns), 19 events
(``Evt1`` .. ``Evt19``, its rows) and 28 actions (``AE-1`` .. ``AE-8``,
``DT-1`` .. ``DT-2``, ``AR-1`` .. ``AR-10``, ``AA-1`` .. ``AA-8``, Tables 9-6
to 9-9). Every defined cell of Table 9-10 names one action; an action does
some work (send a PDU, issue a primitive to the service user, start or stop
the ARTIM timer, close the transport) and moves the machine to a next state.

This module holds only data: the two enums and :data:`TRANSITIONS`, a literal
dict written in the order of Table 9-10, one block per event, so that a
reviewer can hold it against the standard line by line. The actions live in
:mod:`gateway.ul.actions`; :mod:`gateway.ul.association` classifies each input
into an event, looks the pair up here and runs the action.

Why a plain dict and not a state-machine library: two actions decide their
next state at run time. **AE-6** (an A-ASSOCIATE-RQ arrived in Sta2) goes to
Sta3 when the request is acceptable to the service-provider and issues an
A-ASSOCIATE indication, or sends an A-ASSOCIATE-RJ and goes to Sta13 when it
is not (a bad protocol version, a full house). **AR-8** (release collision)
goes to Sta9 for the association-requestor and to Sta10 for the acceptor. So
actions return their next state, and the table maps ``(state, event)`` to an
action rather than to a fixed state.

Cells that Table 9-10 leaves empty are handled by the caller, not here:

* for a *local* primitive (Evt1, 7, 8, 9, 11, 14, 15) an empty cell is a bug
  in the caller and raises :class:`~gateway.ul.errors.LocalProtocolError`;
* for a *remote* input the standard defines every cell in which a PDU can
  arrive; the remaining ones (a PDU in Sta1 or Sta4, where no connection or
  no association exists yet) cannot happen with a real transport and are
  treated as invalid input (AA-8 style abort) rather than crashing.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Mapping


class State(Enum):
    """The 13 states of PS3.8 Table 9-10."""

    STA1 = "Sta1"  # Idle
    STA2 = "Sta2"  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = "Sta3"  # Awaiting local A-ASSOCIATE response primitive (from local user)
    STA4 = "Sta4"  # Awaiting transport connection opening to complete (from local transport service)
    STA5 = "Sta5"  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = "Sta6"  # Association established and ready for data transfer
    STA7 = "Sta7"  # Awaiting A-RELEASE-RP PDU
    STA8 = "Sta8"  # Awaiting local A-RELEASE response primitive (from local user)
    STA9 = "Sta9"  # Release collision requestor side; awaiting A-RELEASE response (from local user)
    STA10 = "Sta10"  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = "Sta11"  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = "Sta12"  # Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)
    STA13 = "Sta13"  # Awaiting Transport Connection Close Indication (Association no longer exists)


class Event(Enum):
    """The 19 events of PS3.8 Table 9-10."""

    EVT1 = "Evt1"  # A-ASSOCIATE Request (local user)
    EVT2 = "Evt2"  # Transport Connect Confirmation (local transport service)
    EVT3 = "Evt3"  # A-ASSOCIATE-AC PDU (received on transport connection)
    EVT4 = "Evt4"  # A-ASSOCIATE-RJ PDU (received on transport connection)
    EVT5 = "Evt5"  # Transport Connection Indication (local transport service)
    EVT6 = "Evt6"  # A-ASSOCIATE-RQ PDU (on transport connection)
    EVT7 = "Evt7"  # A-ASSOCIATE response primitive (accept)
    EVT8 = "Evt8"  # A-ASSOCIATE response primitive (reject)
    EVT9 = "Evt9"  # P-DATA request primitive
    EVT10 = "Evt10"  # P-DATA-TF PDU
    EVT11 = "Evt11"  # A-RELEASE Request primitive
    EVT12 = "Evt12"  # A-RELEASE-RQ PDU (on transport)
    EVT13 = "Evt13"  # A-RELEASE-RP PDU (on transport)
    EVT14 = "Evt14"  # A-RELEASE Response primitive
    EVT15 = "Evt15"  # A-ABORT Request primitive
    EVT16 = "Evt16"  # A-ABORT PDU (on transport)
    EVT17 = "Evt17"  # Transport connection closed indication (local transport service)
    EVT18 = "Evt18"  # ARTIM timer expired (Association reject/release timer)
    EVT19 = "Evt19"  # Unrecognized or invalid PDU received


class Action(Enum):
    """The actions of PS3.8 Tables 9-6 (AE), 9-7 (DT), 9-8 (AR) and 9-9 (AA)."""

    AE_1 = "AE-1"  # Issue TRANSPORT CONNECT request primitive to local transport service
    AE_2 = "AE-2"  # Send A-ASSOCIATE-RQ-PDU
    AE_3 = "AE-3"  # Issue A-ASSOCIATE confirmation (accept) primitive
    AE_4 = "AE-4"  # Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection
    AE_5 = "AE-5"  # Issue Transport connection response primitive; start ARTIM timer
    AE_6 = "AE-6"  # Stop ARTIM; if acceptable issue A-ASSOCIATE indication, else send A-ASSOCIATE-RJ and start ARTIM
    AE_7 = "AE-7"  # Send A-ASSOCIATE-AC PDU
    AE_8 = "AE-8"  # Send A-ASSOCIATE-RJ PDU and start ARTIM timer
    DT_1 = "DT-1"  # Send P-DATA-TF PDU
    DT_2 = "DT-2"  # Send P-DATA indication primitive
    AR_1 = "AR-1"  # Send A-RELEASE-RQ PDU
    AR_2 = "AR-2"  # Issue A-RELEASE indication primitive
    AR_3 = "AR-3"  # Issue A-RELEASE confirmation primitive, and close transport connection
    AR_4 = "AR-4"  # Issue A-RELEASE-RP PDU and start ARTIM timer
    AR_5 = "AR-5"  # Stop ARTIM timer
    AR_6 = "AR-6"  # Issue P-DATA indication
    AR_7 = "AR-7"  # Issue P-DATA-TF PDU
    AR_8 = "AR-8"  # Issue A-RELEASE indication (release collision)
    AR_9 = "AR-9"  # Send A-RELEASE-RP PDU
    AR_10 = "AR-10"  # Issue A-RELEASE confirmation primitive
    AA_1 = "AA-1"  # Send A-ABORT PDU (service-user source) and (re-)start ARTIM timer
    AA_2 = "AA-2"  # Stop ARTIM timer if running. Close transport connection
    AA_3 = "AA-3"  # Issue A-ABORT or A-P-ABORT indication and close transport connection
    AA_4 = "AA-4"  # Issue A-P-ABORT indication primitive
    AA_5 = "AA-5"  # Stop ARTIM timer
    AA_6 = "AA-6"  # Ignore PDU
    AA_7 = "AA-7"  # Send A-ABORT PDU
    AA_8 = "AA-8"  # Send A-ABORT PDU (service-provider source), issue A-P-ABORT indication, start ARTIM


#: Events that come from the local service user; an empty cell for one of these is a caller bug.
LOCAL_EVENTS: Final[frozenset[Event]] = frozenset(
    {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15}
)

_S = State
_E = Event
_A = Action

#: PS3.8 Table 9-10, transcribed in the standard's order: one block per event
#: (row), one entry per defined state (column). Empty cells are absent.
TRANSITIONS: Final[Mapping[tuple[State, Event], Action]] = {
    # Evt1: A-ASSOCIATE Request (local user)
    (_S.STA1, _E.EVT1): _A.AE_1,
    # Evt2: Transport Connect Confirmation (local transport service)
    (_S.STA4, _E.EVT2): _A.AE_2,
    # Evt3: A-ASSOCIATE-AC PDU (received on transport connection)
    (_S.STA2, _E.EVT3): _A.AA_1,
    (_S.STA3, _E.EVT3): _A.AA_8,
    (_S.STA5, _E.EVT3): _A.AE_3,
    (_S.STA6, _E.EVT3): _A.AA_8,
    (_S.STA7, _E.EVT3): _A.AA_8,
    (_S.STA8, _E.EVT3): _A.AA_8,
    (_S.STA9, _E.EVT3): _A.AA_8,
    (_S.STA10, _E.EVT3): _A.AA_8,
    (_S.STA11, _E.EVT3): _A.AA_8,
    (_S.STA12, _E.EVT3): _A.AA_8,
    (_S.STA13, _E.EVT3): _A.AA_6,
    # Evt4: A-ASSOCIATE-RJ PDU (received on transport connection)
    (_S.STA2, _E.EVT4): _A.AA_1,
    (_S.STA3, _E.EVT4): _A.AA_8,
    (_S.STA5, _E.EVT4): _A.AE_4,
    (_S.STA6, _E.EVT4): _A.AA_8,
    (_S.STA7, _E.EVT4): _A.AA_8,
    (_S.STA8, _E.EVT4): _A.AA_8,
    (_S.STA9, _E.EVT4): _A.AA_8,
    (_S.STA10, _E.EVT4): _A.AA_8,
    (_S.STA11, _E.EVT4): _A.AA_8,
    (_S.STA12, _E.EVT4): _A.AA_8,
    (_S.STA13, _E.EVT4): _A.AA_6,
    # Evt5: Transport Connection Indication (local transport service)
    (_S.STA1, _E.EVT5): _A.AE_5,
    # Evt6: A-ASSOCIATE-RQ PDU (on transport connection)
    (_S.STA2, _E.EVT6): _A.AE_6,
    (_S.STA3, _E.EVT6): _A.AA_8,
    (_S.STA5, _E.EVT6): _A.AA_8,
    (_S.STA6, _E.EVT6): _A.AA_8,
    (_S.STA7, _E.EVT6): _A.AA_8,
    (_S.STA8, _E.EVT6): _A.AA_8,
    (_S.STA9, _E.EVT6): _A.AA_8,
    (_S.STA10, _E.EVT6): _A.AA_8,
    (_S.STA11, _E.EVT6): _A.AA_8,
    (_S.STA12, _E.EVT6): _A.AA_8,
    (_S.STA13, _E.EVT6): _A.AA_7,
    # Evt7: A-ASSOCIATE response primitive (accept)
    (_S.STA3, _E.EVT7): _A.AE_7,
    # Evt8: A-ASSOCIATE response primitive (reject)
    (_S.STA3, _E.EVT8): _A.AE_8,
    # Evt9: P-DATA request primitive
    (_S.STA6, _E.EVT9): _A.DT_1,
    (_S.STA8, _E.EVT9): _A.AR_7,
    # Evt10: P-DATA-TF PDU
    (_S.STA2, _E.EVT10): _A.AA_1,
    (_S.STA3, _E.EVT10): _A.AA_8,
    (_S.STA5, _E.EVT10): _A.AA_8,
    (_S.STA6, _E.EVT10): _A.DT_2,
    (_S.STA7, _E.EVT10): _A.AR_6,
    (_S.STA8, _E.EVT10): _A.AA_8,
    (_S.STA9, _E.EVT10): _A.AA_8,
    (_S.STA10, _E.EVT10): _A.AA_8,
    (_S.STA11, _E.EVT10): _A.AA_8,
    (_S.STA12, _E.EVT10): _A.AA_8,
    (_S.STA13, _E.EVT10): _A.AA_6,
    # Evt11: A-RELEASE Request primitive
    (_S.STA6, _E.EVT11): _A.AR_1,
    # Evt12: A-RELEASE-RQ PDU (on transport)
    (_S.STA2, _E.EVT12): _A.AA_1,
    (_S.STA3, _E.EVT12): _A.AA_8,
    (_S.STA5, _E.EVT12): _A.AA_8,
    (_S.STA6, _E.EVT12): _A.AR_2,
    (_S.STA7, _E.EVT12): _A.AR_8,
    (_S.STA8, _E.EVT12): _A.AA_8,
    (_S.STA9, _E.EVT12): _A.AA_8,
    (_S.STA10, _E.EVT12): _A.AA_8,
    (_S.STA11, _E.EVT12): _A.AA_8,
    (_S.STA12, _E.EVT12): _A.AA_8,
    (_S.STA13, _E.EVT12): _A.AA_6,
    # Evt13: A-RELEASE-RP PDU (on transport)
    (_S.STA2, _E.EVT13): _A.AA_1,
    (_S.STA3, _E.EVT13): _A.AA_8,
    (_S.STA5, _E.EVT13): _A.AA_8,
    (_S.STA6, _E.EVT13): _A.AA_8,
    (_S.STA7, _E.EVT13): _A.AR_3,
    (_S.STA8, _E.EVT13): _A.AA_8,
    (_S.STA9, _E.EVT13): _A.AA_8,
    (_S.STA10, _E.EVT13): _A.AR_10,
    (_S.STA11, _E.EVT13): _A.AR_3,
    (_S.STA12, _E.EVT13): _A.AA_8,
    (_S.STA13, _E.EVT13): _A.AA_6,
    # Evt14: A-RELEASE Response primitive
    (_S.STA8, _E.EVT14): _A.AR_4,
    (_S.STA9, _E.EVT14): _A.AR_9,
    (_S.STA12, _E.EVT14): _A.AR_4,
    # Evt15: A-ABORT Request primitive
    (_S.STA3, _E.EVT15): _A.AA_1,
    (_S.STA4, _E.EVT15): _A.AA_2,
    (_S.STA5, _E.EVT15): _A.AA_1,
    (_S.STA6, _E.EVT15): _A.AA_1,
    (_S.STA7, _E.EVT15): _A.AA_1,
    (_S.STA8, _E.EVT15): _A.AA_1,
    (_S.STA9, _E.EVT15): _A.AA_1,
    (_S.STA10, _E.EVT15): _A.AA_1,
    (_S.STA11, _E.EVT15): _A.AA_1,
    (_S.STA12, _E.EVT15): _A.AA_1,
    # Evt16: A-ABORT PDU (on transport)
    (_S.STA2, _E.EVT16): _A.AA_2,
    (_S.STA3, _E.EVT16): _A.AA_3,
    (_S.STA5, _E.EVT16): _A.AA_3,
    (_S.STA6, _E.EVT16): _A.AA_3,
    (_S.STA7, _E.EVT16): _A.AA_3,
    (_S.STA8, _E.EVT16): _A.AA_3,
    (_S.STA9, _E.EVT16): _A.AA_3,
    (_S.STA10, _E.EVT16): _A.AA_3,
    (_S.STA11, _E.EVT16): _A.AA_3,
    (_S.STA12, _E.EVT16): _A.AA_3,
    (_S.STA13, _E.EVT16): _A.AA_2,
    # Evt17: Transport connection closed indication (local transport service)
    (_S.STA2, _E.EVT17): _A.AA_5,
    (_S.STA3, _E.EVT17): _A.AA_4,
    (_S.STA4, _E.EVT17): _A.AA_4,
    (_S.STA5, _E.EVT17): _A.AA_4,
    (_S.STA6, _E.EVT17): _A.AA_4,
    (_S.STA7, _E.EVT17): _A.AA_4,
    (_S.STA8, _E.EVT17): _A.AA_4,
    (_S.STA9, _E.EVT17): _A.AA_4,
    (_S.STA10, _E.EVT17): _A.AA_4,
    (_S.STA11, _E.EVT17): _A.AA_4,
    (_S.STA12, _E.EVT17): _A.AA_4,
    (_S.STA13, _E.EVT17): _A.AR_5,
    # Evt18: ARTIM timer expired (Association reject/release timer)
    (_S.STA2, _E.EVT18): _A.AA_2,
    (_S.STA13, _E.EVT18): _A.AA_2,
    # Evt19: Unrecognized or invalid PDU received
    (_S.STA2, _E.EVT19): _A.AA_1,
    (_S.STA3, _E.EVT19): _A.AA_8,
    (_S.STA5, _E.EVT19): _A.AA_8,
    (_S.STA6, _E.EVT19): _A.AA_8,
    (_S.STA7, _E.EVT19): _A.AA_8,
    (_S.STA8, _E.EVT19): _A.AA_8,
    (_S.STA9, _E.EVT19): _A.AA_8,
    (_S.STA10, _E.EVT19): _A.AA_8,
    (_S.STA11, _E.EVT19): _A.AA_8,
    (_S.STA12, _E.EVT19): _A.AA_8,
    (_S.STA13, _E.EVT19): _A.AA_7,
}
