"""Notifications when a study has reached its destinations (issue 18).

A route with ``notify:`` (:class:`gateway.config.schema.NotifyConfig`) keeps
one row per study in the journal's ``studies`` table
(:mod:`gateway.queue.studies`), written in the intake's own transaction. The
tracker (:mod:`gateway.notify.tracker`, run by the housekeeping node) finds
the studies that are complete at the route's destinations and, in one
transaction, records the completion and queues one entry per sink, each
carrying a :class:`~gateway.notify.document.StudyNotification` as its file.
From there the sinks are destinations like the others (durable queue,
retries, circuit, dead letters, metrics); their senders shape the document
for the receiver: :mod:`gateway.send.webhook` (JSON, HMAC-signed),
:mod:`gateway.send.hl7` (HL7 v2 ORU^R01 over MLLP) and
:mod:`gateway.send.fhir` (ImagingStudy R4, conditional update).
"""
