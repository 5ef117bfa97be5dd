"""Query/Retrieve through the gateway (PS3.4 Annex C; issue 16).

The gateway is a Query/Retrieve SCP (Patient Root and Study Root: FIND, MOVE,
GET) that proxies to the archives named in ``query.sources`` /
``retrieve.sources`` (DICOM destinations), with its own access control,
morphing and audit in the path. Results stream: no whole result set is ever
held in memory.

The modules, one verb each:

* ``gateway/dimse/commands.py``: C-FIND/C-MOVE/C-GET RQ/RSP and C-CANCEL-RQ;
  ``gateway/dimse/identifier.py``: query/response identifiers (decode,
  encode, the level's keys and their checks).
* ``merge.py``: pure: the level's unique key of a response, duplicate removal,
  source precedence, the ``max_results`` guard.
* ``find.py``: one query fanned out to the sources (parallel for ``merge``, in
  order for ``first``), responses relayed as they come, C-CANCEL, timeouts,
  ``strict``, the query and response morphs (UID remapping both ways).
* ``move.py``: C-MOVE: locate with C-FIND, then ``relay`` (the sources move to
  the gateway; custody; a ``move.NAME`` queue to the move destination; pending
  counts from the journal) or ``pass_through``.
* ``get.py``: C-GET: retrieve from the source (C-GET, or C-MOVE to the gateway),
  C-STORE sub-operations back on the requester's association.
* ``scp.py``: the requests on an accepted association (checks, access, dispatch,
  responses in order, cancel).
* the journal's side: ``gateway/queue/retrieves.py`` (``IRetrieveJournal``).
"""
