"""Fuzz the Q/R identifier decoder (HARDENING R2): only IdentifierError, in every transfer syntax it accepts.

Identifiers come from requesters (C-FIND/C-MOVE/C-GET-RQ) and from sources
(C-FIND-RSP matches); :func:`gateway.dimse.identifier.decode_identifier`
must turn any byte string into a Dataset or an IdentifierError, never
another exception from pydicom. Bounded for CI by ``max_examples``.
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.identifier import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    IdentifierError,
    Model,
    check_query,
    decode_identifier,
    encode_identifier,
    unique_key,
)
from tests.unit.fuzz import arbitrary, mutated

_SETTINGS = settings(max_examples=1500, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_SYNTAXES = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE)


def _query() -> Dataset:
    """A STUDY query with text, date range, UID list and a sequence key."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "DOE^J*"
    ds.PatientID = "P1"
    ds.StudyDate = "20200101-20201231"
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    ds.NumberOfStudyRelatedInstances = ""
    inner = Dataset()
    inner.UniversalEntityID = "1.2.3"
    ds.IssuerOfPatientIDQualifiersSequence = [inner]
    return ds


@lru_cache(maxsize=1)
def identifier_seeds() -> tuple[bytes, ...]:
    """The query in Implicit VR LE (the decoder is fed each mutation in the three syntaxes).

    :returns: the seeds.
    """
    return (encode_identifier(_query(), IMPLICIT_VR_LE), encode_identifier(_query(), EXPLICIT_VR_LE))


def target_decode_identifier(data: bytes) -> None:
    """Decode ``data`` in every accepted syntax; only IdentifierError may escape, and a decoded one can be checked and keyed."""
    for ts in _SYNTAXES:
        try:
            ds = decode_identifier(data, ts)
        except IdentifierError:
            continue
        for model in Model:
            try:
                level = check_query(ds, model, retrieve=True)
            except IdentifierError:
                continue
            unique_key(ds, level)


class IdentifierFuzzTests(SynchronousTestCase):
    """decode_identifier raises nothing but IdentifierError."""

    def test_seeds_decode(self) -> None:
        """The seeds decode, so mutations start from valid input."""
        for seed, ts in zip(identifier_seeds(), (IMPLICIT_VR_LE, EXPLICIT_VR_LE)):
            self.assertEqual(decode_identifier(seed, ts).PatientID, "P1")

    @_SETTINGS
    @given(data=mutated(identifier_seeds))
    def test_mutated_identifiers_raise_only_identifier_error(self, data: bytes) -> None:
        """A mutated identifier decodes or raises IdentifierError only."""
        target_decode_identifier(data)

    @_SETTINGS
    @given(data=arbitrary())
    def test_arbitrary_bytes_raise_only_identifier_error(self, data: bytes) -> None:
        """Arbitrary bytes decode or raise IdentifierError only."""
        target_decode_identifier(data)
