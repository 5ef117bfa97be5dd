"""Which sender serves which kind of destination.

:data:`SENDERS` maps a destination's configuration type to the factory of
its :class:`~gateway.send.Sender`; the worker asks :func:`sender_for` and
never looks at the type itself. A new kind of destination registers its
sender here (:func:`register_sender`).
"""

from __future__ import annotations

from typing import Any, Callable

from gateway.config.schema import DicomDestination, DicomWebDestination, FhirSink, FolderDestination, Hl7Sink, WebhookSink
from gateway.send import SendContext, Sender
from gateway.send.dicom import DicomSender
from gateway.send.dicomweb import DicomWebSender
from gateway.send.fhir import FhirSender
from gateway.send.folder import FolderSender
from gateway.send.hl7 import Hl7Sender
from gateway.send.webhook import WebhookSender

__all__ = ["SenderFactory", "SENDERS", "register_sender", "sender_for"]

#: Makes the sender of one destination from its configuration.
SenderFactory = Callable[[Any, SendContext], Sender]

#: Configuration type -> sender factory.
SENDERS: dict[type, SenderFactory] = {
    DicomDestination: DicomSender,
    FolderDestination: FolderSender,
    # Issue 17: STOW-RS (PS3.18 10.5).
    DicomWebDestination: DicomWebSender,
    # Issue 18: study notifications to a webhook, (ImagingStudy) to a FHIR server, (ORU^R01) over MLLP.
    WebhookSink: WebhookSender,
    FhirSink: FhirSender,
    Hl7Sink: Hl7Sender,
}


def register_sender(config_type: type, factory: SenderFactory) -> None:
    """Serve destinations configured as ``config_type`` with senders made by ``factory``.

    :param config_type: the destination's configuration class.
    :param factory: ``factory(config, context)`` returns the destination's sender.
    """
    SENDERS[config_type] = factory


def sender_for(config: Any, context: SendContext) -> Sender:
    """The sender of one destination.

    :param config: the destination's configuration.
    :param context: what the worker lends the sender.
    :raises TypeError: when no sender is registered for the configuration's type.
    """
    factory = SENDERS.get(type(config))
    if factory is None:
        raise TypeError(f"no sender for destinations of type {type(config).__name__}")
    return factory(config, context)
