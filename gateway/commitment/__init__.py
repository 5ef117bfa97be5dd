"""Storage Commitment through the gateway (PS3.4 Annex J, Push Model; issue 15).

A modality asks (N-ACTION-RQ) whether the gateway has taken responsibility
for instances it sent; the gateway answers the request at once and the
outcome later, in an N-EVENT-REPORT-RQ on a new association to the
modality. What "committed" means is the operator's policy (``received``,
``delivered``, ``committed``), never more than is true, and the report owed
is journaled so that no restart loses it or sends it twice.

The modules, one verb each:

* ``model.py``: the report and request as data (what the codec encodes, the
  verdict produces and the journal keeps as JSON); the Failure Reasons.
* ``gateway/dimse/commitment.py``: the N-ACTION and N-EVENT-REPORT data sets,
  encoded and decoded by hand (sans-IO).
* ``scp.py``: the N-ACTION and inbound N-EVENT-REPORT handling on an accepted
  association (validation, access, journal, response status).
* ``verdict.py``: pure: what the journal knows of the requested instances ->
  each instance committed, failed (with its reason) or undecided, and the report.
* ``worker.py``: leases owed transactions, decides, sends, retries with backoff,
  dead-letters after ``report_deadline``; takes over a dead node's.
* ``report.py``: sends one report: an association to the requester with the
  SCP/SCU role selection (PS3.4 J.3.3.1.3), N-EVENT-REPORT-RQ, its response.
* ``archive.py``: the gateway as SCU towards archives that commit
  (``storage_commitment: true``): N-ACTION for delivered copies, their reports.
"""
