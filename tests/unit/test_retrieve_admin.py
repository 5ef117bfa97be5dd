"""``dicom-gateway retrieve list|show`` and ``/api/v1/retrieves`` (issue 16): the operator's view of retrieves.

One memory journal filled by :func:`fill` (a C-MOVE done with a failure, a
C-GET open, a C-MOVE cancelled), read through the command line (in-process,
the store patched in) and through the admin API (``DummyRequest`` over a
:class:`~gateway.http.ServiceBackend`), plus the keyset pages and the
"not on record" message that tells the operator about ``retention.retrieves``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import admin_retrieves as ar
from gateway import cli
from gateway.http import ServiceBackend, build_site
from gateway.queue.commitments import Reference
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.queue.retrieves import ItemState, RetrieveState
from tests.adapters.test_http import ALICE, _Service, body_of, render
from tests.unit.queue.test_retrieves import new_retrieve
from tests.unit.queue.test_store import T0, make_record

CT = "1.2.840.10008.5.1.4.1.1.2"

CONFIG = """\
ae_title: GW
listen: [{host: 127.0.0.1, port: 0}]
spool: spool
retention: {retrieves: 2d}
"""


def fill(store: MemoryQueueStore) -> tuple[int, int, int]:
    """Three retrieves: a C-MOVE DONE (one completed, one failed), a C-GET OPEN, a C-MOVE CANCELLED; their ids."""
    move = store.open_retrieve(
        new_retrieve(expected=(Reference(CT, "2.25.11"), Reference(CT, "2.25.12")), requester_ae_title="VIEWER"), T0
    )
    record = make_record("i11", sop_instance_uid="2.25.11", sop_class_uid=CT, received_at=T0)
    (entry_id,) = store.add_instance(record, [NewEntry("retrieve", "move.viewer")], T0, 0.0).entry_ids
    store.link_item(move.retrieve_id, "2.25.11", entry_id, T0 + 1)
    (leased,) = store.lease("move.viewer", 1, T0 + 1, 30)
    store.complete([entry_id], T0 + 2, "", {entry_id: leased.lease_generation})
    store.item_outcome(move.retrieve_id, "2.25.12", ItemState.FAILED, "the source does not have it", T0 + 2)
    store.finish_retrieve(move.retrieve_id, RetrieveState.DONE, "", T0 + 3)
    get = store.open_retrieve(
        new_retrieve(kind="get", destination="", requester_ae_title="WS2", expected=(Reference(CT, "2.25.21"),)), T0 + 10
    )
    cancelled = store.open_retrieve(new_retrieve(expected=(Reference(CT, "2.25.31"),)), T0 + 20)
    store.finish_retrieve(cancelled.retrieve_id, RetrieveState.CANCELLED, "C-CANCEL from the requester", T0 + 21)
    return move.retrieve_id, get.retrieve_id, cancelled.retrieve_id


class RetrieveAdminTests(SynchronousTestCase):
    """The functions behind both views."""

    def setUp(self) -> None:
        self.store = MemoryQueueStore("gw-a")
        self.move, self.get, self.cancelled = fill(self.store)

    def test_rows_carry_the_request_and_the_counts_now(self) -> None:
        """Newest first; the DONE move counts 1 completed and 1 failed; the open get 1 remaining, past its deadline."""
        rows = ar.retrieve_rows(self.store, T0 + 5000)
        self.assertEqual([r["retrieve_id"] for r in rows], [self.cancelled, self.get, self.move])
        move = rows[2]
        self.assertEqual(
            (move["kind"], move["state"], move["requester_ae_title"], move["destination"], move["mode"], move["sources"]),
            ("move", "done", "VIEWER", "viewer", "relay", ["archive1", "archive2"]),
        )
        self.assertEqual((move["completed"], move["failed"], move["remaining"], move["instances"]), (1, 1, 0, 2))
        self.assertEqual((rows[1]["kind"], rows[1]["remaining"], rows[1]["overdue"]), ("get", 1, True))
        self.assertEqual([r["retrieve_id"] for r in ar.retrieve_rows(self.store, T0, RetrieveState.CANCELLED)], [self.cancelled])

    def test_detail_lists_each_item_with_its_entry_and_reason(self) -> None:
        """show: the failed UID list and each item's state, count, entry and failure reason."""
        detail = ar.retrieve_detail(self.store, self.move, T0)
        self.assertEqual(detail["failed_uids"], ["2.25.12"])
        self.assertEqual(
            [(i["sop_instance_uid"], i["state"], i["counted"], i["entry_id"] is not None, i["reason"]) for i in detail["items"]],
            [("2.25.11", "received", "completed", True, ""), ("2.25.12", "failed", "failed", False, "the source does not have it")],
        )
        text = ar.format_retrieve(detail)
        self.assertIn("C-MOVE done", text)
        self.assertIn("2.25.12 (1.2.840.10008.5.1.4.1.1.2): failed, counts failed: the source does not have it", text)
        with self.assertRaises(KeyError):
            ar.retrieve_detail(self.store, 999, T0)

    def test_pages_follow_the_cursor_to_the_end(self) -> None:
        """Pages of one: each ``next`` leads to the following retrieve, the last page has none; the open counts by kind."""
        seen: list[int] = []
        before = None
        while True:
            page = ar.retrieve_page(self.store, T0, None, 1, before)
            seen.extend(r["retrieve_id"] for r in page["retrieves"])
            self.assertEqual(page["open"], {"move": 0, "get": 1})
            if page["next"] is None:
                break
            before = ar.decode_cursor(page["next"])
        self.assertEqual(seen, [self.cancelled, self.get, self.move])

    def test_bad_cursors_and_states_are_refused(self) -> None:
        """A cursor not made by encode_cursor, and an unknown state, raise ValueError."""
        for text in ("", "x", "1_x", "nan_3", "1.5", "1_-2", "9" * 70 + "_1"):
            with self.assertRaises(ValueError, msg=text):
                ar.decode_cursor(text)
        with self.assertRaises(ValueError):
            ar.parse_state("lost")
        retrieve = self.store.get_retrieve(self.get)
        self.assertEqual(ar.decode_cursor(ar.encode_cursor(retrieve)), (retrieve.created_at, retrieve.retrieve_id))

    def test_not_on_record_names_the_retention(self) -> None:
        """The message says finished retrieves go after retention.retrieves (or are kept forever with 0)."""
        self.assertIn("kept 7d after they end: retention.retrieves", ar.not_on_record(5, 7 * 86400.0))
        self.assertIn("kept forever", ar.not_on_record(5, 0.0))


class RetrieveCliTests(SynchronousTestCase):
    """``dicom-gateway retrieve list|show`` on the same journal."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "spool"))
        self.config_path = os.path.join(self.folder, "gw.yaml")
        with open(self.config_path, "w", encoding="utf-8") as stream:
            stream.write(CONFIG)
        self.store = MemoryQueueStore("gw-a")
        self.move, self.get, self.cancelled = fill(self.store)
        self.patch(cli, "_open_store", lambda config: self.store)
        self.patch(self.store, "close", lambda: None)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """Run ``dicom-gateway ARGV`` in-process; the exit status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(argv))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    def test_list_text_json_state_and_limit(self) -> None:
        """``list``: a line per retrieve with kind, state, requester and counts; ``--state``/``--limit``/``--json`` filter and cut."""
        code, out, err = self.run_cli("retrieve", "list", "-c", self.config_path)
        self.assertEqual(code, 0, err)
        lines = out.strip().splitlines()
        self.assertEqual(len(lines), 1 + 3 + 1)  # header, three rows, the cancelled one's error line
        self.assertRegex(out, rf"\s{self.move} move done\s+VIEWER\s+viewer\s+relay .* 1\s+0\s+1\s+0  archive1,archive2")
        self.assertRegex(out, rf"\s{self.get} get\s+\w+\s+WS2\s+\(requester\)")
        self.assertIn("C-CANCEL from the requester", out)
        code, out, err = self.run_cli("retrieve", "list", "-c", self.config_path, "--state", "open", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([r["retrieve_id"] for r in json.loads(out)], [self.get])
        code, out, err = self.run_cli("retrieve", "list", "-c", self.config_path, "--limit", "1", "--json")
        self.assertEqual([r["retrieve_id"] for r in json.loads(out)], [self.cancelled])

    def test_show_text_and_json(self) -> None:
        """``show ID``: requester, destination, counts and every item; ``--json`` the same as data."""
        code, out, err = self.run_cli("retrieve", "show", "-c", self.config_path, str(self.move))
        self.assertEqual(code, 0, err)
        self.assertIn("requester    VIEWER on listener main, message id 7", out)
        self.assertIn("instances    2: 1 completed, 0 warning, 1 failed, 0 remaining", out)
        self.assertIn("2.25.11 (1.2.840.10008.5.1.4.1.1.2): received, counts completed entry", out)
        code, out, err = self.run_cli("retrieve", "show", "-c", self.config_path, str(self.move), "--json")
        self.assertEqual(json.loads(out)["failed_uids"], ["2.25.12"])

    def test_show_of_a_retrieve_not_on_record_says_why(self) -> None:
        """``show`` of an id not on record exits 1 naming retention.retrieves (2d in this configuration)."""
        code, out, err = self.run_cli("retrieve", "show", "-c", self.config_path, "999")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no retrieve 999 on record (finished retrieves are kept 2d after they end: retention.retrieves", err)

    def test_a_bad_state_is_refused_by_the_parser(self) -> None:
        """``--state lost`` is a usage error (exit 2)."""
        code, _out, err = self.run_cli("retrieve", "list", "-c", self.config_path, "--state", "lost")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)


class RetrieveApiTests(SynchronousTestCase):
    """``GET /api/v1/retrieves`` and ``/api/v1/retrieves/{id}`` behind the API's token."""

    def setUp(self) -> None:
        self.service: Any = _Service(self.mktemp())
        self.service.config.retrieve_retention = 7 * 86400.0
        self.move, self.get, self.cancelled = fill(self.service.store)
        backend = ServiceBackend(self.service, load=lambda path: None, clock=Clock(), wall=lambda: T0)
        self.site = build_site(CollectorRegistry(), backend, ALICE)

    def test_list_pages_with_the_cursor(self) -> None:
        """``?limit=2`` then ``?cursor=next`` (default limit): every retrieve once, newest first; the open counts by kind."""
        first = body_of(render(self.site, b"GET", "/api/v1/retrieves?limit=2"))
        self.assertEqual([r["retrieve_id"] for r in first["retrieves"]], [self.cancelled, self.get])
        self.assertEqual(first["open"], {"move": 0, "get": 1})
        second = body_of(render(self.site, b"GET", f"/api/v1/retrieves?cursor={first['next']}"))
        self.assertEqual([r["retrieve_id"] for r in second["retrieves"]], [self.move])
        self.assertIsNone(second["next"])

    def test_list_filters_by_state_and_refuses_bad_arguments(self) -> None:
        """``?state=done`` keeps the done one; a bad state, cursor or limit is 400."""
        body = body_of(render(self.site, b"GET", "/api/v1/retrieves?state=done"))
        self.assertEqual([r["retrieve_id"] for r in body["retrieves"]], [self.move])
        for query in ("state=lost", "cursor=abc", "limit=0", "limit=5000", "limit=x"):
            self.assertEqual(render(self.site, b"GET", f"/api/v1/retrieves?{query}").responseCode, 400, query)

    def test_one_retrieve_and_not_on_record(self) -> None:
        """``/retrieves/{id}``: the detail; an unknown id is 404 naming the retention; a non-number or a path below is 404."""
        request = render(self.site, b"GET", f"/api/v1/retrieves/{self.move}")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual([i["state"] for i in body_of(request)["items"]], ["received", "failed"])
        missing = render(self.site, b"GET", "/api/v1/retrieves/999")
        self.assertEqual(missing.responseCode, 404)
        self.assertIn("retention.retrieves", body_of(missing)["error"])
        self.assertEqual(render(self.site, b"GET", "/api/v1/retrieves/abc").responseCode, 404)
        self.assertEqual(render(self.site, b"GET", f"/api/v1/retrieves/{self.move}/items").responseCode, 404)

    def test_the_token_is_required(self) -> None:
        """Without the bearer token the list and the detail are 401, as every /api route."""
        self.assertEqual(render(self.site, b"GET", "/api/v1/retrieves", token=None).responseCode, 401)
        self.assertEqual(render(self.site, b"GET", f"/api/v1/retrieves/{self.move}", token=None).responseCode, 401)
