"""The console's pages and refusals through the real site (issue 18).

Each test sends HTTP requests as bytes through the channel of the site
:func:`gateway.http.build_site` makes (over a ``StringTransport``), with a
fake :class:`~gateway.console.data.ConsoleData`, an injected clock and a
users file in a temporary folder; pages are read with the standard
library's HTML parser, by the ids and classes the browser tests use.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.console.fakes import multipart
from tests.unit.console.support import ConsoleHarness


class PagesTestCase(SynchronousTestCase):
    """A console site over a fake ConsoleData in a temporary folder."""
    def setUp(self) -> None:
        self.h = ConsoleHarness(self.mktemp_dir())

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path


class SignInTests(PagesTestCase):
    """Sign-in, sign-out and the sign-in throttle."""
    def test_no_session_redirects_to_login(self) -> None:
        """Every page without a session is a 303 to the sign-in page."""
        for path in ("/console/", "/console/find", "/console/dead-letters", "/console/rules", "/console/audit", "/console/overview.part"):
            response = self.h.client().get(path)
            self.assertEqual(response.status, 303, path)
            self.assertEqual(response.header("location"), "/console/login")

    def test_login_form(self) -> None:
        """The sign-in page has form#login with user, password and a CSRF token."""
        page = self.h.client().get("/console/login").page
        form = page.one("form", id="login")
        self.assertEqual(form.attrs["method"], "post")
        self.assertEqual(len(form.all("input", name="user")), 1)
        self.assertEqual(len(form.all("input", name="password")), 1)
        self.assertTrue(form.one("input", name="csrf").attrs["value"])

    def test_sign_in_ok_sets_a_strict_http_only_cookie(self) -> None:
        """A good password sets an HttpOnly SameSite=Strict cookie, shows the user and node, and is audited."""
        client = self.h.client()
        response = client.sign_in("otto", "operator-pass-2")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/console/")
        cookie = [c for c in response.headers["set-cookie"] if c.startswith("gw_console=")][0].lower()
        self.assertIn("httponly", cookie)
        self.assertIn("samesite=strict", cookie)
        self.assertIn("path=/console", cookie)
        self.assertNotIn("secure", cookie)  # plain HTTP here; Secure over TLS
        page = client.get("/console/").page
        self.assertEqual(page.by_id("whoami").text(), "otto (operator)")
        self.assertEqual(page.by_id("node").text(), "node-a")
        for ident in ("nav-overview", "nav-find", "nav-dead", "nav-rules", "nav-audit"):
            self.assertIsNotNone(page.by_id(ident), ident)
        self.assertEqual(page.one("form", id="logout").attrs["action"], "/console/logout")
        accepted = self.h.records("User Authentication")
        self.assertEqual(len(accepted), 1)
        self.assertEqual(accepted[0].outcome, 0)
        self.assertEqual(accepted[0].participants[0].alternative_user_id, "otto")

    def test_cookie_secure_over_tls(self) -> None:
        """Served over TLS, the session cookie is Secure (and still HttpOnly, SameSite=Strict)."""
        client = self.h.client(secure=True)
        response = client.sign_in("otto", "operator-pass-2")
        self.assertEqual(response.status, 303)
        cookie = [c for c in response.headers["set-cookie"] if c.startswith("gw_console=")][0].lower()
        self.assertIn("secure", cookie)
        self.assertIn("httponly", cookie)
        self.assertIn("samesite=strict", cookie)

    def test_sign_in_bad_password(self) -> None:
        """A wrong password re-renders the form with #login-error, sets no session, and is audited as a failure."""
        client = self.h.client()
        response = client.sign_in("otto", "wrong")
        self.assertEqual(response.status, 200)
        self.assertIsNotNone(response.page.by_id("login-error"))
        self.assertNotIn("gw_console", client.cookies)
        self.assertEqual(client.get("/console/").status, 303)
        refused = self.h.records("User Authentication")
        self.assertEqual([r.outcome for r in refused], [4])

    def test_sign_in_unknown_user_same_answer(self) -> None:
        """An unknown user gets the same answer as a wrong password."""
        response = self.h.client().sign_in("nobody", "x")
        self.assertEqual(response.page.by_id("login-error").text(), "Unknown user or wrong password.")

    def test_login_post_without_csrf_refused(self) -> None:
        """A sign-in post without its CSRF token is refused with #csrf-refused."""
        client = self.h.client()
        client.get("/console/login")
        response = client.post("/console/login", {"user": "otto", "password": "operator-pass-2"})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("csrf-refused"))
        self.assertNotIn("gw_console", client.cookies)

    def test_brute_force_locks_out_for_a_minute(self) -> None:
        """After five failures even the right password is 429 for a minute."""
        client = self.h.client()
        for _ in range(5):
            self.assertEqual(client.sign_in("otto", "bad").status, 200)
        # Even the right password is refused now (429), for a minute.
        self.assertEqual(client.sign_in("otto", "operator-pass-2").status, 429)
        self.h.now += 61
        self.assertEqual(client.sign_in("otto", "operator-pass-2").status, 303)

    def test_brute_force_per_address(self) -> None:
        """Five failures from one address lock that address, not others."""
        client = self.h.client()
        for n in range(5):
            client.sign_in(f"guess{n}", "bad")
        self.assertEqual(client.sign_in("ada", "admin-pass-3").status, 429)
        other = self.h.client(peer="10.0.0.9")
        self.assertEqual(other.sign_in("ada", "admin-pass-3").status, 303)

    def test_sign_out(self) -> None:
        """Signing out ends the session and is audited."""
        client = self.h.signed_in("vera")
        response = client.post("/console/logout", {"csrf": client.csrf()})
        self.assertEqual(response.status, 303)
        self.assertEqual(response.header("location"), "/console/login")
        self.assertEqual(client.get("/console/").status, 303)
        self.assertEqual(
            [r.description for r in self.h.records("User Authentication")], ["console sign-in accepted", "console sign-out"]
        )


class SessionTests(PagesTestCase):
    """Session expiry and invalidation."""
    def test_idle_timeout(self) -> None:
        """A session ends after session_timeout without a request; each request renews it."""
        client = self.h.signed_in("vera")
        self.h.now += 599
        self.assertEqual(client.get("/console/").status, 200)  # renews the idle time
        self.h.now += 599
        self.assertEqual(client.get("/console/").status, 200)
        self.h.now += 601
        self.assertEqual(client.get("/console/").status, 303)

    def test_automatic_refresh_does_not_renew(self) -> None:
        """overview.part (the script's refresh) does not count as activity: the session still idles out."""
        client = self.h.signed_in("vera")
        for _ in range(5):
            self.h.now += 100
            self.assertEqual(client.get("/console/overview.part").status, 200)
        self.h.now += 101
        self.assertEqual(client.get("/console/overview.part").status, 303)

    def test_absolute_lifetime(self) -> None:
        """A session ends after session_lifetime however active."""
        client = self.h.signed_in("vera")
        for _ in range(7):
            self.h.now += 500
            self.assertEqual(client.get("/console/").status, 200)
        self.h.now += 200  # 3700 s after sign-in, never idle
        self.assertEqual(client.get("/console/").status, 303)

    def test_forged_cookie(self) -> None:
        """A cookie with a wrong signature is no session."""
        client = self.h.signed_in("vera")
        value = client.cookies["gw_console"]
        client.cookies["gw_console"] = value[:-2] + ("00" if not value.endswith("00") else "11")
        self.assertEqual(client.get("/console/").status, 303)

    def test_password_change_ends_sessions(self) -> None:
        """Changing a user's password in the file ends the user's sessions; the new password works without reload."""
        from gateway.console.users import format_user, hash_password
        from tests.unit.console.support import _LINES

        client = self.h.signed_in("otto")
        self.assertEqual(client.get("/console/").status, 200)
        lines = dict(_LINES)
        lines["otto"] = format_user("otto", "operator", hash_password("new-password-5"))
        self.h.write_users(lines.values())
        os.utime(self.h.users_path, ns=(1, 2))  # a new mtime whatever the file system's resolution
        self.assertEqual(client.get("/console/").status, 303)
        self.assertEqual(self.h.client().sign_in("otto", "new-password-5").status, 303)


class RefusalTests(PagesTestCase):
    """Requests the console refuses (CSRF, role, Origin, Host, no users)."""
    def test_post_without_csrf(self) -> None:
        """A POST without a CSRF token is 403 #csrf-refused, changes nothing and is audited."""
        client = self.h.signed_in("otto")
        response = client.post("/console/destinations/pacs/pause", {})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("csrf-refused"))
        self.assertEqual([c for c in self.h.data.calls if c[0] == "pause"], [])
        alerts = self.h.records("Security Alert")
        self.assertEqual(len(alerts), 1)
        self.assertEqual(alerts[0].participants[0].user_id, "otto")

    def test_post_with_invalid_csrf(self) -> None:
        """Another session's CSRF token is refused."""
        client = self.h.signed_in("otto")
        other = self.h.signed_in("ada")
        response = client.post("/console/destinations/pacs/pause", {"csrf": other.csrf()})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("csrf-refused"))

    def test_viewer_post_forbidden(self) -> None:
        """Every action posted by a viewer is 403 #forbidden, changes nothing and is audited."""
        client = self.h.signed_in("vera")
        csrf = client.csrf()
        for path, fields in (
            ("/console/destinations/pacs/pause", {}),
            ("/console/dead-letters/action", {"action": "retry", "ids": "5", "scope": "selected"}),
            ("/console/dead-letters/action", {"action": "purge", "ids": "5", "scope": "selected"}),
            ("/console/reload", {}),
        ):
            response = client.post(path, {"csrf": csrf, **fields})
            self.assertEqual(response.status, 403, path)
            self.assertIsNotNone(response.page.by_id("forbidden"), path)
        self.assertEqual([c[0] for c in self.h.data.calls if c[0] in ("pause", "retry", "purge", "reload")], [])
        self.assertEqual(len(self.h.records("Security Alert")), 4)

    def test_operator_may_not_reload(self) -> None:
        """Reload needs the admin role."""
        client = self.h.signed_in("otto")
        response = client.post("/console/reload", {"csrf": client.csrf()})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("forbidden"))

    def test_foreign_origin_refused(self) -> None:
        """A POST with another site's Origin is refused."""
        client = self.h.signed_in("ada")
        response = client.post("/console/reload", {"csrf": client.csrf()}, headers={"Origin": "https://evil.example"})
        self.assertEqual(response.status, 403)
        self.assertEqual([c for c in self.h.data.calls if c[0] == "reload"], [])

    def test_foreign_host_refused(self) -> None:
        """A Host the gateway does not serve is refused."""
        response = self.h.client(host="evil.example").get("/console/login")
        self.assertEqual(response.status, 403)

    def test_no_users_file_closes_the_console(self) -> None:
        """Without users_file every page is the no-users page with how to make one."""
        h = ConsoleHarness(self.mktemp_dir(), users=False)
        for path in ("/console/", "/console/login", "/console/dead-letters"):
            response = h.client().get(path)
            self.assertEqual(response.status, 503)
            page = response.page
            self.assertIsNotNone(page.by_id("no-users"))
            self.assertIn("dicom-gateway console-user", page.by_id("no-users").text())

    def test_missing_users_file_closes_the_console_until_it_appears(self) -> None:
        """A users_file that does not exist (yet) closes the console; once written, sign-in works without a reload."""
        from tests.unit.console.support import _LINES

        os.unlink(self.h.users_path)
        response = self.h.client().get("/console/login")
        self.assertEqual(response.status, 503)
        self.assertIsNotNone(response.page.by_id("no-users"))
        self.h.write_users(_LINES.values())
        self.assertEqual(self.h.client().sign_in("ada", "admin-pass-3").status, 303)


class OverviewTests(PagesTestCase):
    """The overview, its fragment, its script and its actions."""
    def test_overview(self) -> None:
        """The overview shows every destination, listener, the spool and the nodes by the contract's ids."""
        page = self.h.signed_in("vera").get("/console/").page
        overview = page.by_id("overview")
        self.assertEqual(overview.attrs["data-refresh"], "3.0")
        pacs = overview.one("tr", data_destination="pacs")
        self.assertEqual(pacs.one("td", class_="state").text(), "down")
        self.assertEqual(pacs.one("td", class_="queued").text(), "12")
        self.assertEqual(pacs.one("td", class_="in-flight").text(), "1")
        self.assertEqual(pacs.one("td", class_="dead").text(), "3")
        self.assertEqual(pacs.one("td", class_="oldest").text(), "90s")
        self.assertEqual(pacs.one("td", class_="last-error").text(), "association refused")
        self.assertEqual(len(pacs.all("svg", class_="rate")), 1)
        self.assertEqual(overview.one("tr", data_destination="archive").one("td", class_="state").text(), "up")
        self.assertEqual(overview.one("tr", data_listener="main").one("td", class_="associations").text(), "2")
        self.assertIn("10.0 GiB free", page.by_id("spool").text())
        self.assertEqual(len(page.by_id("nodes").all("tr", data_node="node-b")), 1)
        # A viewer sees no action forms.
        self.assertEqual(page.all("form", class_="pause") + page.all("form", id="reload"), [])
        scripts = page.all("script")
        self.assertEqual([s.attrs["src"] for s in scripts], ["/console/static/console.js"])

    def test_circuit_reason_shown_once(self) -> None:
        """The circuit's reason is shown beside the last error only when it says something else."""
        import dataclasses

        from twisted.internet.defer import succeed

        base = self.h.data.overview

        def overview(reason: str) -> None:
            def patched() -> object:
                view = base().result
                first = dataclasses.replace(view.destinations[0], circuit_reason=reason)
                return succeed(dataclasses.replace(view, destinations=(first,) + view.destinations[1:]))

            self.h.data.overview = patched

        client = self.h.signed_in("vera")
        overview("association refused")
        cell = client.get("/console/overview.part").page.one("tr", data_destination="pacs").one("td", class_="last-error")
        self.assertEqual(cell.text(), "association refused")
        overview("probe failed: TLS unknown_ca")
        cell = client.get("/console/overview.part").page.one("tr", data_destination="pacs").one("td", class_="last-error")
        self.assertIn("(probe failed: TLS unknown_ca)", cell.text())

    def test_overview_part_is_the_fragment(self) -> None:
        """overview.part is the content of div#overview, not a whole page."""
        client = self.h.signed_in("vera")
        response = client.get("/console/overview.part")
        self.assertEqual(response.status, 200)
        page = response.page
        self.assertIsNone(page.by_id("overview"))  # the content of div#overview, not the page
        self.assertEqual(len(page.all("table", id="destinations")), 1)
        self.assertNotIn(b"<html", response.body)

    def test_static_script_and_style(self) -> None:
        """The script and the style are served without a session; other paths are not files."""
        response = self.h.client().get("/console/static/console.js")
        self.assertEqual(response.status, 200)
        self.assertIn(b"overview.part", response.body)
        self.assertIn(b"fetch(", response.body)
        self.assertEqual(self.h.client().get("/console/static/console.css").status, 200)
        self.assertEqual(self.h.client().get("/console/static/favicon.svg").header("content-type"), "image/svg+xml")
        self.assertEqual(self.h.client().get("/console/static/../users.py").status, 303)

    def test_operator_pauses_and_resumes(self) -> None:
        """An operator pauses a destination with its form; the action carries the user and a flash follows."""
        client = self.h.signed_in("otto")
        page = client.get("/console/").page
        form = page.one("tr", data_destination="pacs").one("form", class_="pause")
        self.assertEqual(form.attrs["action"], "/console/destinations/pacs/pause")
        csrf = form.one("input", name="csrf").attrs["value"]
        response = client.post("/console/destinations/pacs/pause", {"csrf": csrf})
        self.assertEqual(response.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "pause"][0]
        self.assertEqual(call[1:3], ("pacs", True))
        self.assertEqual((call[3].who, call[3].via), ("otto", "console"))
        page = client.get(response.header("location")).page
        self.assertEqual(page.by_id("flash").text(), "Destination paused.")
        row = page.one("tr", data_destination="pacs")
        self.assertEqual(row.one("td", class_="state").text(), "paused")
        self.assertEqual(len(row.all("form", class_="resume")), 1)

    def test_admin_reloads(self) -> None:
        """An admin reloads the configuration from the overview's form."""
        client = self.h.signed_in("ada")
        page = client.get("/console/").page
        form = page.one("form", id="reload")
        response = client.post(form.attrs["action"], {"csrf": form.one("input", name="csrf").attrs["value"]})
        self.assertEqual(response.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "reload"][0]
        self.assertEqual(call[1].who, "ada")
        self.assertEqual(client.get(response.header("location")).page.by_id("flash").text(), "Configuration reloaded.")

    def test_last_error_is_escaped(self) -> None:
        """A destination's last error holding markup is shown escaped, under a CSP without inline script."""
        self.h.data.last_error = '<script>alert("x")</script>'
        response = self.h.signed_in("vera").get("/console/")
        self.assertNotIn(b"<script>alert", response.body)
        self.assertIn(b"&lt;script&gt;alert", response.body)
        cell = response.page.one("tr", data_destination="pacs").one("td", class_="last-error")
        self.assertEqual(cell.text(), '<script>alert("x")</script>')
        self.assertIn("script-src 'self'", response.header("content-security-policy") or "")


class FindTests(PagesTestCase):
    """The find page and PHI masking."""
    def test_find_masks_phi(self) -> None:
        """Find results mask the Patient ID for a user without :phi."""
        page = self.h.signed_in("vera").get("/console/find?by=patient&q=PAT12345").page
        self.assertEqual(self.h.data.calls[-1], ("find", "patient", "PAT12345"))
        found = page.by_id("found")
        row = found.one("tr", data_sop="1.2.3.1")
        self.assertEqual(row.one("td", class_="patient").text(), "P***")
        entry = found.one("tr", data_entry="1")
        self.assertEqual(entry.one("td", class_="destination").text(), "pacs")
        self.assertEqual(entry.one("td", class_="state").text(), "dead")
        # The search term the user typed is in the form, the Patient ID nowhere else.
        body = self.h.signed_in("vera").get("/console/find?by=sop&q=1.2.3.1").body
        self.assertNotIn(b"PAT12345", body)

    def test_find_shows_phi_to_a_phi_user(self) -> None:
        """A user with :phi sees the Patient ID."""
        page = self.h.signed_in("phil").get("/console/find?by=sop&q=1.2.3.1").page
        self.assertEqual(page.by_id("found").one("tr", data_sop="1.2.3.1").one("td", class_="patient").text(), "PAT12345")

    def test_find_form_without_query(self) -> None:
        """Without a query, find shows the form only."""
        page = self.h.signed_in("vera").get("/console/find").page
        self.assertIsNotNone(page.by_id("find"))
        self.assertIsNone(page.by_id("found"))


class DeadLetterTests(PagesTestCase):
    """The dead-letter list, detail and actions."""
    def test_list_with_keyset_paging(self) -> None:
        """Dead letters are listed 50 a page with a keyset cursor in a#next-page, PHI masked."""
        client = self.h.signed_in("otto")
        page = client.get("/console/dead-letters?destination=pacs").page
        table = page.by_id("dead-letters")
        rows = [r for r in table.all("tr") if "data-entry" in r.attrs]
        self.assertEqual(len(rows), 50)
        first = rows[0]
        self.assertEqual(first.attrs["data-entry"], "60")
        self.assertEqual(first.one("input", name="ids").attrs["value"], "60")
        self.assertEqual(first.one("td", class_="destination").text(), "pacs")
        self.assertEqual(first.one("td", class_="reason").text(), "refused")
        self.assertEqual(first.one("td", class_="route").text(), "ct")
        self.assertEqual(first.one("td", class_="age").text(), "2.0h")
        self.assertEqual(first.one("td", class_="patient").text(), "P***")
        self.assertEqual(first.all("a")[0].attrs["href"], "/console/dead-letters/60")
        nxt = page.by_id("next-page").attrs["href"]
        self.assertIn("before=11", nxt)
        self.assertIn("destination=pacs", nxt)
        second = client.get(nxt).page
        self.assertEqual(len([r for r in second.by_id("dead-letters").all("tr") if "data-entry" in r.attrs]), 10)
        self.assertIsNone(second.by_id("next-page"))
        self.assertNotIn(b"PAT12345", client.get(nxt).body)

    def test_filter_older_than(self) -> None:
        """The age filter becomes enqueued_before; the reason select offers the dead-letter kinds."""
        client = self.h.signed_in("otto")
        client.get("/console/dead-letters?older_than=3h")
        where = [c for c in self.h.data.calls if c[0] == "dead_letters"][-1][1]
        self.assertEqual(where.enqueued_before, self.h.now - 3 * 3600)
        reasons = [o.text() for o in client.get("/console/dead-letters?reason=gave_up").page.by_id("dead-filter").one("select", name="reason").all("option")]
        self.assertIn("refused", reasons)
        self.assertIn("gave_up", reasons)
        page = client.get("/console/dead-letters?older_than=3h").page
        self.assertEqual([r for r in page.by_id("dead-letters").all("tr") if "data-entry" in r.attrs], [])

    def test_detail_with_attempts(self) -> None:
        """A dead letter's page lists its attempts and its retry/purge forms; an unknown id is 404."""
        page = self.h.signed_in("otto").get("/console/dead-letters/5").page
        attempts = page.by_id("attempts").all("tr")[1:]
        self.assertEqual([a.one("td", class_="error").text() for a in attempts], ["timeout", "refused: 0xA700"])
        self.assertTrue(attempts[0].one("td", class_="at").text().endswith("Z"))
        self.assertIsNotNone(page.by_id("retry-one"))
        self.assertIsNotNone(page.by_id("purge-one"))
        self.assertEqual(self.h.signed_in("otto").get("/console/dead-letters/999").status, 404)

    def test_operator_retries_one(self) -> None:
        """An operator retries one dead letter from its page; the action carries the user."""
        client = self.h.signed_in("otto")
        form = client.get("/console/dead-letters/5").page.by_id("retry-one")
        fields = {i.attrs["name"]: i.attrs.get("value", "") for i in form.all("input")}
        response = client.post(form.attrs["action"], {**fields, "to": ""})
        self.assertEqual(response.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "retry"][0]
        self.assertEqual(call[1], (5,))
        self.assertIsNone(call[3])
        self.assertEqual((call[4].who, call[4].via), ("otto", "console"))
        page = client.get(response.header("location")).page
        self.assertEqual(page.by_id("flash").text(), "Retried 1 dead letter(s).")

    def test_retarget_one(self) -> None:
        """Retrying with a destination re-targets."""
        client = self.h.signed_in("otto")
        response = client.post("/console/dead-letters/action", {"csrf": client.csrf(), "action": "retry", "scope": "selected", "ids": "5", "to": "archive"})
        self.assertEqual(response.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "retry"][0]
        self.assertEqual(call[3], "archive")
        self.assertIn("done=retarget", response.header("location"))

    def test_forced_retarget_needs_admin(self) -> None:
        """A forced re-target (where no route sends) is refused to an operator and passed on for an admin."""
        client = self.h.signed_in("otto")
        fields = {"csrf": client.csrf(), "action": "retry", "scope": "selected", "ids": "5", "to": "archive", "force": "yes"}
        refused = client.post("/console/dead-letters/action", fields)
        self.assertEqual(refused.status, 403)
        self.assertIsNotNone(refused.page.by_id("forbidden"))
        self.assertEqual([c for c in self.h.data.calls if c[0] == "retry"], [])
        admin = self.h.signed_in("ada")
        done = admin.post("/console/dead-letters/action", {**fields, "csrf": admin.csrf()})
        self.assertEqual(done.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "retry"][0]
        self.assertEqual((call[3], call[5]), ("archive", True))

    def test_unforced_retarget_is_not_forced(self) -> None:
        """Without the admin's tick a re-target goes to the data layer unforced (no route, no copy)."""
        admin = self.h.signed_in("ada")
        admin.post("/console/dead-letters/action", {"csrf": admin.csrf(), "action": "retry", "scope": "selected", "ids": "5", "to": "archive"})
        call = [c for c in self.h.data.calls if c[0] == "retry"][0]
        self.assertFalse(call[5])

    def test_bad_value_from_the_data_layer_is_a_400(self) -> None:
        """A ValueError from the data layer (a reason that is no kind) is the request's fault: 400, not 500."""
        from twisted.internet.defer import fail

        self.h.data.dead_letters = lambda where, before, limit=50: fail(ValueError("no dead-letter kind 'bogus'"))
        client = self.h.signed_in("otto")
        response = client.get("/console/dead-letters?reason=bogus")
        self.assertEqual(response.status, 400)
        self.assertIsNotNone(response.page.by_id("bad-request"))

    def test_retarget_to_unknown_destination_refused(self) -> None:
        """Re-targeting to an unknown destination is a 400, nothing done."""
        client = self.h.signed_in("otto")
        response = client.post("/console/dead-letters/action", {"csrf": client.csrf(), "action": "retry", "scope": "selected", "ids": "5", "to": "nowhere"})
        self.assertEqual(response.status, 400)
        self.assertEqual([c for c in self.h.data.calls if c[0] == "retry"], [])

    def test_selected_several_asks_for_confirmation(self) -> None:
        """Several selected dead letters need a confirmation showing the count before anything changes."""
        client = self.h.signed_in("otto")
        csrf = client.csrf()
        response = client.post("/console/dead-letters/action", {"csrf": csrf, "action": "purge", "scope": "selected", "ids": ["5", "6", "7"]})
        self.assertEqual(response.status, 200)
        page = response.page
        self.assertIsNotNone(page.by_id("confirm"))
        self.assertEqual(page.by_id("affected").text(), "3")
        self.assertEqual([c for c in self.h.data.calls if c[0] == "purge"], [])
        form = page.by_id("confirm-form")
        fields: dict[str, Any] = {}
        for i in form.all("input"):
            fields.setdefault(i.attrs["name"], []).append(i.attrs.get("value", ""))
        self.assertEqual(fields["confirmed"], ["yes"])
        self.assertEqual(fields["ids"], ["5", "6", "7"])
        done = client.post(form.attrs["action"], fields)
        self.assertEqual(done.status, 303)
        call = [c for c in self.h.data.calls if c[0] == "purge"][0]
        self.assertEqual(call[1], (5, 6, 7))
        self.assertEqual(client.get(done.header("location")).page.by_id("flash").text(), "Purged 3 dead letter(s).")

    def test_all_matching_filter_counts_then_acts(self) -> None:
        """All matching the filter: the count first, then the action with the filter, then back to the filtered list."""
        self.h.data.dead[0:5] = [e.__class__(**{**e.__dict__, "destination": "archive"}) for e in self.h.data.dead[0:5]]
        client = self.h.signed_in("otto")
        page = client.get("/console/dead-letters?destination=archive").page
        actions = page.by_id("dead-actions")
        hidden = {i.attrs["name"]: i.attrs["value"] for i in actions.all("input") if i.attrs.get("type") == "hidden"}
        self.assertEqual(hidden["destination"], "archive")
        response = client.post("/console/dead-letters/action", {**hidden, "action": "retry", "scope": "filter"})
        self.assertEqual(response.page.by_id("affected").text(), "5")
        self.assertEqual([c for c in self.h.data.calls if c[0] == "retry"], [])
        form = response.page.by_id("confirm-form")
        fields: dict[str, Any] = {}
        for i in form.all("input"):
            fields.setdefault(i.attrs["name"], []).append(i.attrs.get("value", ""))
        done = client.post("/console/dead-letters/action", fields)
        self.assertEqual(done.status, 303)
        self.assertIn("destination=archive", done.header("location"))
        call = [c for c in self.h.data.calls if c[0] == "retry"][0]
        self.assertIsNone(call[1])
        self.assertEqual(call[2].destination, "archive")
        self.assertEqual(client.get(done.header("location")).page.by_id("flash").text(), "Retried 5 dead letter(s).")


class RulesTests(PagesTestCase):
    """The rule tester and its streamed upload."""
    def test_routes_as_loaded(self) -> None:
        """The rules page lists the routes and has the upload form."""
        page = self.h.signed_in("vera").get("/console/rules").page
        routes = page.by_id("routes")
        self.assertEqual([li.attrs["data-route"] for li in routes.all("li")], ["ct", "all"])
        form = page.by_id("rule-test")
        self.assertEqual(form.attrs["enctype"], "multipart/form-data")
        self.assertEqual(len(form.all("input", type="file", name="file")), 1)

    def test_upload_is_checked_then_deleted(self) -> None:
        """An uploaded file is checked as sent and deleted; matches, targets and the tag diff are shown."""
        client = self.h.signed_in("vera")
        body, content_type = multipart({"csrf": client.csrf("/console/rules")}, b"DICM-bytes" * 1000)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 200)
        path, data = self.h.data.checked[0]
        self.assertEqual(data, b"DICM-bytes" * 1000)
        self.assertTrue(path.startswith(self.h.upload_folder))
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.h.upload_folder), [])
        page = response.page
        self.assertEqual([li.attrs["data-route"] for li in page.by_id("matches").all("li")], ["ct"])
        self.assertEqual([li.attrs["data-destination"] for li in page.by_id("targets").all("li")], ["pacs"])
        diff = page.one("table", class_="diff", data_route="ct")
        row = diff.all("tr")[1]
        self.assertEqual(row.one("td", class_="tag").text(), "(0010,0010) PatientName")
        self.assertEqual(row.one("td", class_="before").text(), "DOE^JOHN")
        self.assertEqual(row.one("td", class_="after").text(), "ANON")

    def test_unreadable_upload_says_why(self) -> None:
        """A file the checker cannot read shows its error (escaped), and no route table."""
        self.h.data.report = {"file": "x", "error": "cannot read the file: <not DICOM>"}
        client = self.h.signed_in("vera")
        body, content_type = multipart({"csrf": client.csrf("/console/rules")}, b"garbage")
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 200)
        self.assertIn("cannot read the file: <not DICOM>", response.page.by_id("report").text())
        self.assertIsNone(response.page.by_id("matches"))

    def test_upload_without_csrf_refused_and_deleted(self) -> None:
        """An upload without a CSRF token is refused and its file deleted."""
        client = self.h.signed_in("vera")
        body, content_type = multipart({}, b"x" * 100)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("csrf-refused"))
        self.assertEqual(self.h.data.checked, [])
        self.assertEqual(os.listdir(self.h.upload_folder), [])

    def test_upload_without_session_refused_at_the_headers(self) -> None:
        """An upload without a session is refused at its headers; nothing is written."""
        client = self.h.client()
        body, content_type = multipart({"csrf": "x"}, b"x" * 5000)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 403)
        self.assertEqual(self.h.data.checked, [])
        self.assertFalse(os.path.exists(self.h.upload_folder) and os.listdir(self.h.upload_folder))
        # Another user's forged cookie is no better.
        client.cookies["gw_console"] = "e30.00"
        self.assertEqual(client.request("POST", "/console/rules", body, {"Content-Type": content_type}).status, 403)

    def test_spool_pick(self) -> None:
        """A spooled instance id is checked from the spool; an unknown id is 404."""
        client = self.h.signed_in("vera")
        body, content_type = multipart({"csrf": client.csrf("/console/rules"), "instance": "i7"}, None)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 200)
        self.assertEqual(self.h.data.checked[0][0], "/nonexistent/i7.dcm")
        body, content_type = multipart({"csrf": client.csrf("/console/rules"), "instance": "nope"}, None)
        self.assertEqual(client.request("POST", "/console/rules", body, {"Content-Type": content_type}).status, 404)

    def test_spool_pick_as_a_urlencoded_form(self) -> None:
        """The spool pick also works as a plain form (the channel streamed its body to a file)."""
        client = self.h.signed_in("vera")
        response = client.post("/console/rules", {"csrf": client.csrf("/console/rules"), "instance": "i7"})
        self.assertEqual(response.status, 200)
        self.assertEqual(self.h.data.checked[0][0], "/nonexistent/i7.dcm")
        self.assertEqual(client.post("/console/rules", {"instance": "i7"}).status, 403)

    def test_upload_over_the_limit_from_content_length(self) -> None:
        """An upload announced above the limit is 413."""
        h = ConsoleHarness(self.mktemp_dir(), upload_limit=1000)
        client = h.signed_in("vera")
        body, content_type = multipart({"csrf": client.csrf("/console/rules")}, b"x" * 2000)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 413)
        self.assertEqual(h.data.checked, [])

    def test_upload_over_the_limit_as_it_grows(self) -> None:
        """A chunked upload growing past the limit is 413."""
        h = ConsoleHarness(self.mktemp_dir(), upload_limit=1000)
        client = h.signed_in("vera")
        body, content_type = multipart({"csrf": client.csrf("/console/rules")}, b"x" * 2000)
        head = (f"POST /console/rules HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: gw_console={client.cookies['gw_console']}\r\n"
                f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n").encode("ascii")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 500]), body[i:i + 500]) for i in range(0, len(body), 500)) + b"0\r\n\r\n"
        response = client.raw(head + chunks)
        self.assertEqual(response.status, 413)
        self.assertEqual(h.data.checked, [])

    def test_large_upload_under_the_limit_is_accepted(self) -> None:
        # Above the API's in-memory limit (64 KiB): the upload has its own.
        """An upload above the API's in-memory limit but below the console's is accepted whole."""
        client = self.h.signed_in("vera")
        payload = os.urandom(300 * 1024)
        body, content_type = multipart({"csrf": client.csrf("/console/rules")}, payload)
        response = client.request("POST", "/console/rules", body, {"Content-Type": content_type})
        self.assertEqual(response.status, 200)
        self.assertEqual(self.h.data.checked[0][1], payload)

    def test_api_body_limit_unchanged(self) -> None:
        """Other console posts keep the API's in-memory body limit."""
        client = self.h.signed_in("otto")
        response = client.post("/console/reload", {"csrf": "x" * (70 * 1024)})
        self.assertEqual(response.status, 413)


class AuditPageTests(PagesTestCase):
    """The audit page."""
    def test_audit_filtered(self) -> None:
        """The audit page passes its filters on and names the node."""
        page = self.h.signed_in("vera").get("/console/audit?event=Login&ae=MODALITY").page
        self.assertEqual(self.h.data.calls[-1], ("audit", "Login", "MODALITY", None))
        self.assertIsNotNone(page.by_id("audit-filter"))
        records = page.by_id("audit").all("tr", class_="record")
        self.assertEqual(len(records), 1)
        self.assertIn("node-a", page.one("h1").text())


class ViewerFormsTests(PagesTestCase):
    """What a viewer sees and may not do."""
    def test_viewer_sees_the_dead_letter_forms_and_is_refused(self) -> None:
        """A viewer's dead-letter page has the action form; posting it is 403 #forbidden and changes nothing."""
        client = self.h.signed_in("vera")
        page = client.get("/console/dead-letters").page
        actions = page.by_id("dead-actions")
        hidden = {i.attrs["name"]: i.attrs["value"] for i in actions.all("input") if i.attrs.get("type") == "hidden"}
        response = client.post("/console/dead-letters/action", {**hidden, "action": "retry", "scope": "selected", "ids": "5"})
        self.assertEqual(response.status, 403)
        self.assertIsNotNone(response.page.by_id("forbidden"))
        detail = client.get("/console/dead-letters/5").page
        self.assertIsNotNone(detail.by_id("purge-one"))
        self.assertEqual([c for c in self.h.data.calls if c[0] in ("retry", "purge")], [])


class FailureTests(PagesTestCase):
    """Failures of the data behind the pages."""
    def test_data_failure_is_a_500_page_without_details(self) -> None:
        """A failing ConsoleData call answers an error page (logged), naming no path or value."""
        from twisted.internet.defer import fail

        self.h.data.overview = lambda: fail(RuntimeError("/secret/path PAT12345"))  # type: ignore[method-assign]
        response = self.h.signed_in("vera").get("/console/")
        self.assertEqual(response.status, 500)
        self.assertIsNotNone(response.page.by_id("error"))
        self.assertNotIn(b"PAT12345", response.body)
        self.assertNotIn(b"/secret/path", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
