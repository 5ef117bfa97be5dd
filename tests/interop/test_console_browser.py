"""The operator console in a real browser, against a real gateway process (issue 18).

Headless Chromium (Debian's ``chromium`` under its ``chromium-driver``,
:mod:`tests.support.browser`) drives the console of a gateway started as an
operating-system process (:class:`~tests.support.gateway_process.GatewayProcess`)
with a users file made by the real ``dicom-gateway console-user`` command,
two DCMTK ``storescp`` destinations and ``storescu`` sending instances:

- ``pacs`` (route ``all``, every instance) is up at the start; the operator
  scenario stops it and watches the overview, which refreshes itself, show it
  ``down`` and its queued count grow, without the test reloading the page
  (a mark left in the page's ``window`` survives);
- ``archive`` (route ``research``: ``StudyDescription`` ``RESEARCH*``, with a
  morph that sets ``InstitutionName``) is down from the start with
  ``retry.max_age`` 2 s, so the circuit's probe loop dead-letters what it
  gets within seconds (README "Delivery": ``max_age`` holds for a
  destination down as a whole); once its ``storescp`` runs, a dead letter
  retried from the dead-letters page is delivered, which the find page and
  the received file show;
- ``scratch`` (a folder, route ``scratch`` that nothing matches) carries the
  pause form the CSRF scenario tampers with, so a failure there cannot disturb
  the other destinations.

One gateway and one browser serve the whole class: the scenarios are steps
of one test method (trial's ``--jobs`` workers would otherwise each start
their own), each signs in afresh and runs even when an earlier one failed,
and the failures are reported together. Every page visited is saved as a
screenshot under the test's temporary folder
(``_trial_temp/tests.interop.test_console_browser.../browser/screenshots/``,
kept after the run). With ``GATEWAY_DOCS_SCREENSHOTS=1`` the overview and
dead-letter pictures are also written to ``docs/console-overview.png`` and
``docs/console-dead-letters.png``
(the README's pictures; a normal run leaves the checkout alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
from twisted.trial.unittest import TestCase

from tests.support import browser as browser_support
from tests.support import dcmtk
from tests.support.browser import Browser
from tests.support.datasets import write_instance
from tests.support.gateway_process import (
    REPO_ROOT,
    GatewayProcess,
    dicom_destination,
    folder_destination,
    wait_until,
)
from tests.support.interop import index_by_sop_instance
from tests.support.ports import free_port, wait_for_port

#: (user, role, password) of the console users the fixture creates.
OPERATOR = ("olivia", "operator", "olivia-secret-1")
VIEWER = ("victor", "viewer", "victor-secret-2")

#: The node name the pages must say they show.
NODE = "console-node"

#: What the ``research`` route's morph writes into InstitutionName, and what the instances carry before.
INSTITUTION = "CONSOLE TEST"
ORIGINAL_INSTITUTION = "ORIGINAL HOSPITAL"

#: The Patient ID and Name every test instance carries (never shown unmasked to a user without ``:phi``).
PATIENT_ID = "INTEROP-1"
PATIENT_NAME = "TEST^INTEROP"

#: Dead letters the fixture makes on ``archive`` before the scenarios.
DEAD_LETTERS = 3

#: Environment variable: when ``1``, the README's two pictures are written under ``docs/``.
DOCS_ENV = "GATEWAY_DOCS_SCREENSHOTS"

#: The viewport of the README's pictures (small PNGs).
DOCS_SIZE = (1100, 700)


def make_instance(path: Path, *, research: bool, seed: int) -> str:
    """Write a small CT instance; a research one matches the ``research`` route.

    :param path: the file to write.
    :param research: set StudyDescription ``RESEARCH CT`` (else ``ROUTINE CT``).
    :param seed: seed of the pixel bytes.
    :returns: its SOP Instance UID.
    """
    write_instance(path, size=4096, seed=seed)
    dataset = pydicom.dcmread(path)
    dataset.StudyDescription = "RESEARCH CT" if research else "ROUTINE CT"
    dataset.InstitutionName = ORIGINAL_INSTITUTION
    dataset.PatientID = PATIENT_ID
    dataset.PatientName = PATIENT_NAME
    dataset.save_as(path, enforce_file_format=True)
    return str(dataset.SOPInstanceUID)


def shrink_png(source: Path, target: Path) -> None:
    """Copy a screenshot for the README, as a 256-colour PNG when Pillow is installed (a third of the size).

    Pillow is no dependency of the project: without it the picture is copied as taken.

    :param source: the screenshot.
    :param target: the file to write.
    """
    try:
        from PIL import Image
    except ImportError:
        target.write_bytes(source.read_bytes())
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)


class ConsoleFixture:
    """The gateway, its two ``storescp`` destinations and the browser that the scenarios share.

    :param root: a folder for all of it (created).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pacs = dcmtk.Storescp(root / "pacs", ae_title="PACS")
        self.archive = dcmtk.Storescp(root / "archive", ae_title="ARCHIVE")
        self.http_port = free_port()
        self.users_file = root / "console-users"
        self.gateway = GatewayProcess(
            root / "gw",
            node=NODE,
            http_port=self.http_port,
            destinations={
                "pacs": dicom_destination(self.pacs.port, "PACS"),
                # Down from the start: the probe loop dead-letters what is older than max_age.
                "archive": dicom_destination(self.archive.port, "ARCHIVE", retry={"max_age": "2s"}),
                "scratch": folder_destination(root / "scratch-out"),
            },
            routes=[
                {"name": "research", "match": {"StudyDescription": "RESEARCH*"},
                 "morph": [{"set": {"InstitutionName": INSTITUTION}}], "forward": ["archive"]},
                {"name": "all", "forward": ["pacs"]},
                {"name": "scratch", "match": {"calling_ae_title": "SCRATCH"}, "forward": ["scratch"]},
            ],
            audit={"file": str(root / "audit.jsonl")},
            console={"enabled": True, "users_file": str(self.users_file), "refresh": "1s"},
        )
        self.browser = Browser(root / "browser")
        self.dead_sops: dict[int, str] = {}
        self._files = 0

    @property
    def audit_path(self) -> Path:
        """The gateway's audit file.

        :returns: its path.
        """
        return self.root / "audit.jsonl"

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit file's records (JSON lines; a line being written is left out).

        :returns: the records, oldest first.
        """
        records = []
        try:
            lines = self.audit_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def audited(self, user: str, **extra: str) -> list[dict[str, Any]]:
        """The audit records naming ``user`` as a participant whose ``extra`` holds every given item.

        :param user: the console user.
        :param extra: items of the record's ``extra`` (``action="retry"``, ``path=...``).
        :returns: the matching records.
        """
        return [
            record for record in self.audit_records()
            if any(user in (p.get("user_id"), p.get("alternative_user_id")) for p in record.get("participants", []))
            and all(str((record.get("extra") or {}).get(key)) == value for key, value in extra.items())
        ]

    def url(self, path: str) -> str:
        """The console's address of ``path``.

        :param path: e.g. ``/console/``.
        :returns: the URL.
        """
        return f"http://127.0.0.1:{self.http_port}{path}"

    def add_users(self, *users: tuple[str, str, str]) -> None:
        """Make the users file with the real ``dicom-gateway console-user`` command (password on stdin).

        The first user is written with ``--file`` (which creates the file,
        mode 0600); the others at the same time without it (the command then
        prints the line), appended afterwards: one file is never written by
        two commands at once.

        :param users: (name, role, password) each.
        :raises AssertionError: if a command fails.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        running = []
        for index, (name, role, password) in enumerate(users):
            argv = [sys.executable, "-m", "gateway", "console-user", name, "--role", role]
            if index == 0:
                argv += ["--file", str(self.users_file)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=REPO_ROOT, env=env, text=True)
            assert proc.stdin is not None
            proc.stdin.write(password + "\n")
            proc.stdin.close()
            running.append((argv, proc))
        lines = []
        for index, (argv, proc) in enumerate(running):
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()
            if proc.wait(60) != 0:
                raise AssertionError(f"$ {' '.join(argv)}\n(exit {proc.returncode})\n{out}\n{err}")
            if index:
                lines.append(out.strip().splitlines()[-1])
        with open(self.users_file, "a") as stream:
            stream.writelines(line + "\n" for line in lines)

    def api(self, path: str) -> Any:
        """GET one ``/api/v1`` resource with the token the gateway generated in its spool.

        :param path: e.g. ``/api/v1/queues``.
        :returns: the parsed JSON answer.
        """
        token = (self.gateway.spool / "http-token").read_text().splitlines()[-1].partition(":")[2]
        request = urllib.request.Request(self.url(path), headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def dead_letters(self, destination: str = "archive") -> dict[int, str]:
        """The dead letters of a destination now, from the admin API.

        :param destination: the destination.
        :returns: entry id -> SOP Instance UID.
        """
        rows = self.api(f"/api/v1/dead-letters?destination={destination}")["dead_letters"]
        return {row["entry_id"]: row["instance"]["sop_instance_uid"] for row in rows
                if row["destination"] == destination}

    def paused(self, destination: str) -> bool:
        """Whether a destination is paused, from the admin API.

        :param destination: the destination.
        :returns: its ``paused`` flag.
        """
        rows = {row["destination"]: row for row in self.api("/api/v1/queues")["queues"]}
        return bool(rows[destination]["paused"])

    def instances(self, count: int, *, research: bool) -> tuple[list[Path], list[str]]:
        """Write ``count`` new instances in the fixture's folder.

        :param count: how many.
        :param research: whether they match the ``research`` route.
        :returns: (paths, SOP Instance UIDs).
        """
        folder = self.root / "sent"
        folder.mkdir(exist_ok=True)
        paths, uids = [], []
        for _ in range(count):
            self._files += 1
            path = folder / f"i{self._files:04d}.dcm"
            uids.append(make_instance(path, research=research, seed=self._files))
            paths.append(path)
        return paths, uids

    def send(self, paths: list[Path], calling_ae: str = "CT1") -> None:
        """Send files to the gateway with ``storescu`` in one association.

        :param paths: the files.
        :param calling_ae: the calling AE title.
        :raises AssertionError: if ``storescu`` fails.
        """
        result = dcmtk.storescu(self.gateway.port, paths, calling_ae=calling_ae, timeout=60)
        if result.returncode != 0:
            raise AssertionError(result.describe())

    def start(self) -> None:
        """Start ``pacs``, the gateway and the browser; make the ``archive`` dead letters.

        :raises AssertionError: when a step does not happen in time.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.add_users(OPERATOR, VIEWER)
        self.pacs.start()
        self.gateway.start()
        wait_for_port("127.0.0.1", self.http_port)
        paths, uids = self.instances(DEAD_LETTERS, research=True)
        self.send(paths)

        def dead() -> dict[int, str]:
            found = self.dead_letters()
            return found if len(found) == DEAD_LETTERS else {}

        self.dead_sops = wait_until(dead, 30, lambda: f"{DEAD_LETTERS} dead letters on archive:\n"
                                    f"{self.gateway.log_text()[-3000:]}")
        if sorted(self.dead_sops.values()) != sorted(uids):
            raise AssertionError(f"dead letters {self.dead_sops} are not the instances sent {uids}")
        wait_until(lambda: len(self.pacs.files()) >= DEAD_LETTERS, 30, "pacs to receive the research instances")
        self.browser.start()

    def stop(self) -> None:
        """Stop the browser, the gateway and both ``storescp`` (each safe when never started)."""
        self.browser.stop()
        self.gateway.stop(15)
        self.pacs.stop()
        self.archive.stop()


#: The scenarios of :meth:`ConsoleBrowserTests.test_console_in_chromium`, in the order they run.
STEPS: tuple[str, ...] = (
    "sign_in_refuses_a_wrong_password_and_pages_need_a_session",
    "operator_sees_a_destination_go_down_then_retries_a_dead_letter_and_watches_it_delivered",
    "viewer_is_refused_a_retry_and_sees_no_patient_data",
    "form_without_its_csrf_token_is_refused_and_with_it_acts",
    "rules_page_shows_the_tag_diff_of_a_morphing_route_and_sends_nothing",
)


class ConsoleBrowserTests(TestCase):
    """Sign in, watch a destination go down, retry a dead letter, refusals and the rule tester, in Chromium."""

    timeout = 150

    def setUp(self) -> None:
        """Fail at once, saying what to install, without the browser or DCMTK (``make test`` installs both)."""
        reason = browser_support.missing() or dcmtk.skip_reason("storescu", "storescp")
        if reason is not None:
            self.fail(f"cannot run the browser tests: {reason}")

    def test_console_in_chromium(self) -> None:
        """Every scenario of :data:`STEPS` against one gateway and one browser; each runs even when an earlier one failed.

        One test method, so that trial's workers (``--jobs``) never start a
        second gateway and browser for this class: the scenarios are
        independent (each signs in afresh) and a failing one is reported
        with its name, its traceback and a screenshot, after the others ran.
        """
        self.console = ConsoleFixture(Path(self.mktemp()).resolve())
        self.addCleanup(self.console.stop)
        self.console.start()
        self.browser = self.console.browser
        failures = []
        for name in STEPS:
            try:
                getattr(self, f"step_{name}")()
            except Exception:  # noqa: BLE001 - reported below with the others
                failures.append(f"--- {name}:\n{traceback.format_exc()}")
                try:
                    self.browser.screenshot(f"failed-{STEPS.index(name) + 1}")
                except Exception:  # noqa: BLE001 - the failure matters, not its picture
                    pass
        if failures:
            self.fail(f"{len(failures)} of {len(STEPS)} console scenarios failed "
                      f"(screenshots in {self.browser.screenshots}):\n" + "\n".join(failures))

    # -- helpers ---------------------------------------------------------------

    def sign_in(self, user: tuple[str, str, str]) -> None:
        """Drop any session, sign in as ``user`` through form#login, and land on the overview.

        :param user: (name, role, password).
        """
        name, role, password = user
        browser = self.browser
        browser.get(self.console.url("/console/login"))
        browser.driver.delete_all_cookies()
        browser.get(self.console.url("/console/login"))
        self.fill_login(name, password)
        browser.wait_text("#whoami", f"{name} ({role})")

    def fill_login(self, name: str, password: str) -> None:
        """Type a user and password into form#login and submit it.

        :param name: the user name.
        :param password: the password.
        """
        browser = self.browser
        browser.wait_for("form#login")
        user_input = browser.css("form#login input[name=user]")
        user_input.clear()
        user_input.send_keys(name)
        password_input = browser.css("form#login input[name=password]")
        password_input.clear()
        password_input.send_keys(password)
        self.submit("form#login")

    def submit(self, form: str, button: str = "") -> None:
        """Submit a form the way a user does: click its submit button (``button`` narrows which).

        :param form: the form's selector.
        :param button: an extra selector for the button inside it (e.g. ``[value=retry]``).
        """
        browser = self.browser

        def click(driver: object) -> bool:
            # A live page may replace the form between the look-up and the click: the wait asks again.
            candidates = browser.css_all(f"{form} button{button}, {form} input[type=submit]{button}")
            if not candidates:
                form_id = browser.css(form).get_attribute("id")
                if form_id:
                    candidates = browser.css_all(f"button[form={form_id}]{button}, "
                                                 f"input[type=submit][form={form_id}]{button}")
            if not candidates:
                return False
            candidates[0].click()
            return True

        browser.wait(click, 10, f"a submit button{button} in {form}")

    def click(self, selector: str) -> None:
        """Click an element, looking it up again if a live page replaced it meanwhile.

        :param selector: the element's selector.
        """
        self.browser.wait(lambda driver: self.browser.css(selector).click() or True, 10, f"{selector} to click")

    def destination_cell(self, destination: str, cell: str) -> str:
        """The text of one cell of a destination's row on the overview.

        :param destination: the destination's name.
        :param cell: the cell's class (``state``, ``queued``...).
        :returns: its stripped text.
        """
        return self.browser.text(f"table#destinations tr[data-destination={destination}] td.{cell}")

    def wait_cell(self, destination: str, cell: str, expected: str, timeout: float = 20.0) -> None:
        """Wait until a destination's cell shows ``expected`` on the (self-refreshing) overview.

        :param destination: the destination's name.
        :param cell: the cell's class.
        :param expected: the text.
        :param timeout: seconds.
        """
        self.browser.wait_text(f"table#destinations tr[data-destination={destination}] td.{cell}", expected, timeout)

    def dead_letter_ids(self) -> list[int]:
        """The entry ids of the dead-letters page's rows.

        :returns: the ids, as the page lists them.
        """
        return [int(row.get_attribute("data-entry")) for row in self.browser.css_all("table#dead-letters tr[data-entry]")]

    def docs_picture(self, name: str) -> Path:
        """Save the README picture ``console-<name>.png`` (small viewport) in the fixture's folder, and under docs/ on demand.

        :param name: ``overview`` or ``dead-letters``.
        :returns: the picture saved in the fixture's folder.
        """
        width, height = DOCS_SIZE
        target = self.console.root / "docs" / f"console-{name}.png"
        self.browser.screenshot_as(f"docs-{name}", target, width, height)
        if os.environ.get(DOCS_ENV) == "1":
            (REPO_ROOT / "docs").mkdir(exist_ok=True)
            shrink_png(target, REPO_ROOT / "docs" / target.name)
        return target

    def entry_states(self, sop_instance_uid: str) -> list[tuple[str, str]]:
        """Load the find page for one SOP Instance UID and read its entries.

        :param sop_instance_uid: the UID searched.
        :returns: (destination, state) per tr[data-entry] of table#found.
        """
        self.browser.get(self.console.url(f"/console/find?by=sop&q={sop_instance_uid}"))
        self.browser.wait_for("form#find")
        rows = self.browser.css_all("table#found tr[data-entry]")
        return [(row.find_element("css selector", "td.destination").text.strip(),
                 row.find_element("css selector", "td.state").text.strip()) for row in rows]

    # -- the scenarios -------------------------------------------------------------

    def step_sign_in_refuses_a_wrong_password_and_pages_need_a_session(self) -> None:
        """Without a session the overview sends to the login page; a wrong password shows #login-error; the right one signs in."""
        browser = self.browser
        browser.get(self.console.url("/console/login"))
        browser.driver.delete_all_cookies()
        browser.get(self.console.url("/console/"))
        browser.wait_for("form#login")
        self.assertTrue(browser.url().endswith("/console/login"), browser.url())
        self.assertTrue(browser.css("form#login input[name=csrf]").get_attribute("value"), "no csrf in form#login")
        browser.screenshot("login")
        self.fill_login(OPERATOR[0], "not-the-password")
        browser.wait_for("#login-error")
        self.assertEqual(browser.css_all("#whoami"), [], "signed in with a wrong password")
        browser.screenshot("login-refused")
        self.fill_login(OPERATOR[0], OPERATOR[2])
        browser.wait_text("#whoami", "olivia (operator)")
        self.assertEqual(browser.text("#node"), NODE)
        for link in ("overview", "find", "dead", "rules", "audit"):
            self.assertTrue(browser.css_all(f"a#nav-{link}"), f"no a#nav-{link}")
        cookies = {cookie["name"]: cookie for cookie in browser.driver.get_cookies()}
        self.assertIn("gw_console", cookies)
        self.assertTrue(cookies["gw_console"]["httpOnly"])
        self.assertEqual(cookies["gw_console"].get("sameSite"), "Strict")
        self.assertEqual(cookies["gw_console"]["path"], "/console")
        self.assertEqual(browser.driver.execute_script("return document.cookie;"), "",
                         "the session cookie is readable from scripts")
        browser.screenshot("overview")

    def step_operator_sees_a_destination_go_down_then_retries_a_dead_letter_and_watches_it_delivered(self) -> None:
        """pacs stopped: the overview (no reload) shows it down and its queue grow; an archive dead letter retried is delivered."""
        console, browser = self.console, self.browser
        if not console.pacs.running:
            console.pacs.start()
        self.sign_in(OPERATOR)
        browser.wait_for("div#overview table#destinations tr[data-destination=pacs]")
        self.wait_cell("pacs", "state", "up")
        browser.wait(lambda driver: self.destination_cell("pacs", "queued").isdigit(), 10, "pacs's queued count")
        queued = int(self.destination_cell("pacs", "queued"))
        browser.driver.execute_script("window.consoleTestMark = 'same page';")

        console.pacs.stop()
        paths, _ = console.instances(2, research=False)
        console.send(paths)
        self.wait_cell("pacs", "state", "down")
        self.wait_cell("pacs", "queued", str(queued + 2))
        browser.screenshot("overview-pacs-down")
        paths, _ = console.instances(3, research=False)
        console.send(paths)
        self.wait_cell("pacs", "queued", str(queued + 5))
        self.assertEqual(browser.driver.execute_script("return window.consoleTestMark;"), "same page",
                         "the page was reloaded: the overview must refresh itself")
        self.assertNotEqual(self.destination_cell("pacs", "last-error"), "", "a down destination without its last error")
        self.assertTrue(browser.css_all("div#overview svg.rate"), "no rate chart")
        self.wait_cell("archive", "dead", str(len(console.dead_letters())))
        self.docs_picture("overview")

        # The archive comes back; a dead letter retried from the dead-letters page is delivered.
        console.archive.start()
        self.click("a#nav-dead")
        browser.wait_for("form#dead-filter")
        browser.get(console.url("/console/dead-letters?destination=archive"))
        browser.wait_for("table#dead-letters tr[data-entry]")
        ids = self.dead_letter_ids()
        dead = console.dead_letters()
        self.assertEqual(sorted(ids), sorted(dead), "the page's dead letters are not the journal's")
        entry_id = min(ids)
        sop = dead[entry_id]
        row = f"table#dead-letters tr[data-entry='{entry_id}']"
        self.assertEqual(browser.text(f"{row} td.destination"), "archive")
        self.assertEqual(browser.text(f"{row} td.route"), "research")
        self.assertNotEqual(browser.text(f"{row} td.reason"), "")
        self.docs_picture("dead-letters")

        browser.css(f"{row} a").click()
        browser.wait_for("table#attempts tr td.error")
        self.assertTrue(browser.url().endswith(f"/console/dead-letters/{entry_id}"), browser.url())
        browser.screenshot("dead-letter-detail")
        browser.driver.back()
        browser.wait_for(f"{row} input[name=ids][value='{entry_id}']").click()
        scope = browser.css_all("form#dead-actions input[name=scope][value=selected]")
        if scope and scope[0].get_attribute("type") == "radio" and not scope[0].is_selected():
            scope[0].click()
        self.submit("form#dead-actions", "[name=action][value=retry]")
        browser.wait(lambda driver: browser.css_all("#flash") or browser.css_all("div#confirm"), 20,
                     "the retry's flash message or its confirmation")
        if browser.css_all("div#confirm"):
            self.assertEqual(browser.text("#affected"), "1")
            browser.screenshot("dead-letters-confirm")
            self.submit("form#confirm-form")
        browser.wait_for("#flash")
        browser.screenshot("dead-letters-retried")

        def delivered() -> bool:
            return ("archive", "delivered") in self.entry_states(sop)

        wait_until(delivered, 30, lambda: f"the find page to show {sop} delivered to archive: {self.entry_states(sop)}")
        browser.screenshot("find-delivered")
        received = wait_until(lambda: index_by_sop_instance(console.archive.files()).get(sop), 10,
                              f"archive's storescp to hold {sop}")
        self.assertEqual(pydicom.dcmread(received, stop_before_pixels=True).InstitutionName, INSTITUTION)
        self.assertNotIn(entry_id, console.dead_letters())

        # The retry is in the audit trail with the user's name, and the audit page shows it.
        retried = wait_until(lambda: console.audited("olivia", action="retry", via="console"), 10,
                             "the console retry's audit record with the user's name")
        self.assertIn(str(entry_id), retried[-1]["extra"]["entry_ids"].split(","))
        self.click("a#nav-audit")
        browser.wait_for("table#audit tr.record")
        records = [row.text for row in browser.css_all("table#audit tr.record")]
        self.assertTrue([text for text in records if "retry" in text and "olivia" in text],
                        f"no retry by olivia on the audit page: {records[:5]}")
        browser.screenshot("audit")

        # pacs comes back: the overview (still no reload) shows it up and its queue drained.
        self.click("a#nav-overview")
        browser.wait_for("table#destinations tr[data-destination=pacs]")
        browser.driver.execute_script("window.consoleTestMark = 'same page';")
        console.pacs.start()
        self.wait_cell("pacs", "state", "up", 30)
        self.wait_cell("pacs", "queued", "0", 30)
        self.assertEqual(browser.driver.execute_script("return window.consoleTestMark;"), "same page")
        browser.screenshot("overview-pacs-up")

    def step_viewer_is_refused_a_retry_and_sees_no_patient_data(self) -> None:
        """A viewer lists the dead letters without Patient ID or Name, and a retry it posts answers #forbidden and changes nothing."""
        console, browser = self.console, self.browser
        self.sign_in(VIEWER)
        browser.get(console.url("/console/dead-letters?destination=archive"))
        browser.wait_for("table#dead-letters tr[data-entry]")
        source = browser.driver.page_source
        self.assertNotIn(PATIENT_ID, source)
        self.assertNotIn(PATIENT_NAME, source)
        self.assertNotIn(PATIENT_NAME.replace("^", " "), source)
        entry_id = max(self.dead_letter_ids())
        browser.screenshot("dead-letters-viewer")
        if browser.css_all("form#dead-actions [name=action][value=retry]"):
            browser.css(f"table#dead-letters tr[data-entry='{entry_id}'] input[name=ids]").click()
            self.submit("form#dead-actions", "[name=action][value=retry]")
        else:
            # The page offers a viewer no retry: post the contract's form with the viewer's own valid token.
            token = browser.css("form#logout input[name=csrf]").get_attribute("value")
            browser.driver.execute_script(
                """
                const form = document.createElement('form');
                form.method = 'POST';
                form.action = '/console/dead-letters/action';
                for (const [name, value] of [['csrf', arguments[0]], ['ids', arguments[1]],
                                             ['action', 'retry'], ['scope', 'selected'], ['to', '']]) {
                  const input = document.createElement('input');
                  input.type = 'hidden'; input.name = name; input.value = value;
                  form.appendChild(input);
                }
                document.body.appendChild(form);
                form.submit();
                """,
                token, str(entry_id),
            )
        browser.wait_for("#forbidden")
        browser.screenshot("forbidden")
        self.assertIn(entry_id, console.dead_letters(), "the viewer's retry changed the dead letter")
        refusals = wait_until(lambda: console.audited("victor", path="/console/dead-letters/action"), 10,
                              "the refusal's audit record with the user's name")
        self.assertEqual(refusals[-1]["event_id"], "110113")  # Security Alert (PS3.15 A.5.3.11; PS3.16 CID 400)

    def step_form_without_its_csrf_token_is_refused_and_with_it_acts(self) -> None:
        """The scratch pause form without its csrf input answers #csrf-refused and pauses nothing; with it, it pauses."""
        console, browser = self.console, self.browser
        self.sign_in(OPERATOR)
        form = "table#destinations tr[data-destination=scratch] form.pause"
        browser.wait_for(form)
        removed = browser.driver.execute_script(
            """
            const form = document.querySelector(arguments[0]);
            const inputs = form.querySelectorAll('input[name=csrf]');
            inputs.forEach((input) => input.remove());
            form.submit();
            return inputs.length;
            """,
            form,
        )
        self.assertEqual(removed, 1, "the pause form has no single csrf input")
        browser.wait_for("#csrf-refused")
        browser.screenshot("csrf-refused")
        self.assertFalse(console.paused("scratch"), "paused without a CSRF token")
        refusals = wait_until(lambda: console.audited("olivia", path="/console/destinations/scratch/pause"), 10,
                              "the CSRF refusal's audit record")
        self.assertEqual(refusals[-1]["event_id"], "110113")  # Security Alert

        browser.get(console.url("/console/"))
        browser.wait_for(form)
        self.submit(form)
        self.wait_cell("scratch", "state", "paused")
        self.assertTrue(console.paused("scratch"))
        browser.screenshot("overview-scratch-paused")
        resume = "table#destinations tr[data-destination=scratch] form.resume"
        browser.wait_for(resume)
        self.submit(resume)
        self.wait_cell("scratch", "state", "up")
        self.assertFalse(console.paused("scratch"))

    def step_rules_page_shows_the_tag_diff_of_a_morphing_route_and_sends_nothing(self) -> None:
        """An uploaded research instance matches research and all, targets archive and pacs, and shows InstitutionName's diff."""
        console, browser = self.console, self.browser
        self.sign_in(OPERATOR)
        self.click("a#nav-rules")
        browser.wait_for("ul#routes li[data-route=research]")
        self.assertEqual({li.get_attribute("data-route") for li in browser.css_all("ul#routes li[data-route]")},
                         {"research", "all", "scratch"})
        browser.screenshot("rules")
        upload = Path(self.mktemp()).resolve()
        upload.mkdir()
        path = upload / "upload.dcm"
        make_instance(path, research=True, seed=9999)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        journaled = console.gateway.journaled_ids()
        browser.css("form#rule-test input[type=file][name=file]").send_keys(str(path))
        self.submit("form#rule-test")
        browser.wait_for("table.diff[data-route=research]")
        browser.screenshot("rules-result")
        self.assertEqual({li.get_attribute("data-route") for li in browser.css_all("ul#matches li[data-route]")},
                         {"research", "all"})
        self.assertEqual({li.get_attribute("data-destination") for li in browser.css_all("ul#targets li[data-destination]")},
                         {"archive", "pacs"})
        rows = [
            tuple(row.find_element("css selector", f"td.{cell}").text.strip() for cell in ("tag", "before", "after"))
            for row in browser.css_all("table.diff[data-route=research] tr")
            if row.find_elements("css selector", "td.tag")
        ]
        institution = [row for row in rows if "InstitutionName" in row[0] or "0008,0080" in row[0]]
        self.assertEqual(len(institution), 1, rows)
        self.assertIn(ORIGINAL_INSTITUTION, institution[0][1])
        self.assertIn(INSTITUTION, institution[0][2])
        self.assertEqual(browser.css_all("table.diff[data-route=all] td.tag"), [], "a route without a morph shows a diff")
        # Deliveries meanwhile may drop rows; none may appear.
        self.assertEqual(console.gateway.journaled_ids() - journaled, set(), "the rule tester journaled an instance")

        def upload_copies() -> list[Path]:
            copies = []
            for folder, _, names in os.walk(console.gateway.spool):
                for name in names:
                    candidate = Path(folder) / name
                    try:
                        if candidate.stat().st_size == path.stat().st_size and \
                                hashlib.sha256(candidate.read_bytes()).hexdigest() == digest:
                            copies.append(candidate)
                    except OSError:
                        continue
            return copies

        wait_until(lambda: not upload_copies(), 10, lambda: f"the upload's temporary file to go: {upload_copies()}")

