"""Drive Debian's headless Chromium through its chromedriver for the console's browser tests (issue 18).

The browser tier proves the console works in a real browser: the pages'
forms, the session cookie, the CSRF tokens and the live refresh script.
:class:`Browser` runs the pieces Debian packages (``chromium`` and
``chromium-driver``, which ``make browser`` / ``make test`` install) and
nothing else:

- the driver is ``/usr/bin/chromedriver``, given to Selenium's
  :class:`~selenium.webdriver.chrome.service.Service` by explicit path, so
  Selenium's ``DriverFinder`` never runs Selenium Manager (selenium 4.51:
  ``Skipping Selenium Manager; path to chrome driver specified``); as a
  second lock ``SE_MANAGER_PATH`` points at ``/bin/false`` and ``SE_OFFLINE``
  is set, so a code path that did call it would fail instead of downloading
  a browser or a driver;
- the driver listens on a port of the test run's pool
  (:func:`tests.support.ports.free_port`) and starts in its own session
  (``popen_kw={"start_new_session": True}``): it is the leader of a process
  group that holds the Chromium processes it starts, so :meth:`Browser.stop`
  ends them all by that group's id even when the driver did not quit
  cleanly, and never touches any other process;
- Chromium runs with ``--headless=new``, ``--no-sandbox`` when the tests run
  as root (its sandbox refuses to start as root), ``--disable-dev-shm-usage``
  (containers have a small ``/dev/shm``), a ``--user-data-dir`` in the
  test's folder and a fixed window (1200x800 by default), so screenshots
  have a known size;
- :meth:`Browser.screenshot` saves the whole page as a PNG under the
  test's folder (``screenshots/NN-name.png``, numbered in order), for a
  human to look at after a run; :meth:`Browser.screenshot_as` takes one of
  a fixed viewport size (the README's pictures).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.ports import free_port

__all__ = ["CHROMEDRIVER", "CHROMIUM", "Browser", "missing"]

#: Debian's chromedriver (package ``chromium-driver``), by explicit path: never one from ``PATH`` or a download.
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Debian's Chromium launcher (package ``chromium``).
CHROMIUM = "/usr/bin/chromium"

_T = TypeVar("_T")


def missing() -> str | None:
    """What the browser tests lack here, if anything; they fail with it (``make test`` installs it all).

    :returns: the reason, or ``None`` when Chromium, its driver and Selenium are installed.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not installed (run `make browser`: apt-get install chromium chromium-driver)"
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e .[test])"
    return None


class Browser:
    """A headless Chromium under its chromedriver, with its profile, log and screenshots in ``folder``.

    :param folder: the test's folder (created): ``chrome-profile/``,
        ``chromedriver.log`` and ``screenshots/`` go there.
    :param width: the window's width in CSS pixels.
    :param height: the window's height.
    """

    def __init__(self, folder: str | os.PathLike[str], *, width: int = 1200, height: int = 800) -> None:
        self.folder = Path(folder).resolve()
        self.width = width
        self.height = height
        self.screenshots = self.folder / "screenshots"
        self.log_path = self.folder / "chromedriver.log"
        self._driver: Any = None
        self._service: Any = None
        self._group: int | None = None
        self._shots = 0

    @property
    def driver(self) -> Any:
        """The Selenium WebDriver.

        :returns: the ``selenium.webdriver.Chrome`` session.
        :raises RuntimeError: before :meth:`start`.
        """
        if self._driver is None:
            raise RuntimeError("the browser is not running")
        return self._driver

    def start(self) -> Browser:
        """Start chromedriver on a free port, then a Chromium session through it.

        :returns: this object.
        :raises RuntimeError: when Chromium or its driver is missing.
        """
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        reason = missing()
        if reason is not None:
            raise RuntimeError(reason)
        # Belt and braces: Selenium Manager is never needed (the driver's path is given), and
        # must never fetch anything if some code path reached it anyway.
        os.environ["SE_MANAGER_PATH"] = "/bin/false"
        os.environ["SE_OFFLINE"] = "true"
        os.environ.pop("SE_CHROMEDRIVER", None)  # it would override the explicit path
        self.folder.mkdir(parents=True, exist_ok=True)
        self.screenshots.mkdir(exist_ok=True)
        profile = self.folder / "chrome-profile"
        profile.mkdir(exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--password-store=basic",
            f"--user-data-dir={profile}",
            f"--window-size={self.width},{self.height}",
        ):
            options.add_argument(argument)
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
        env = {key: value for key, value in os.environ.items() if key != "SE_CHROMEDRIVER"}
        env["HOME"] = str(self.folder)  # crash reports and caches stay in the test's folder
        self._service = Service(
            executable_path=CHROMEDRIVER,
            port=free_port(),
            log_output=str(self.log_path),
            env=env,
            popen_kw={"start_new_session": True},
        )
        try:
            self._driver = webdriver.Chrome(service=self._service, options=options)
        except BaseException:
            process = getattr(self._service, "process", None)
            if process is not None:
                self._group = process.pid
                self._kill_group()  # the driver that started, and a Chromium it launched
            raise
        # start_new_session: the driver leads its own process group, Chromium's processes included.
        self._group = self._service.process.pid
        self._driver.set_window_size(self.width, self.height)
        self._driver.set_page_load_timeout(30)
        return self

    def stop(self) -> None:
        """Quit the session, stop the driver, and end whatever is left of its process group; safe twice."""
        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001 - a dead driver must not keep the group alive
                pass
        self._kill_group()

    def _kill_group(self) -> None:
        """Send SIGTERM, then SIGKILL after 5 s, to the driver's process group (Chromium included) until it is empty.

        :raises RuntimeError: when a process of the group outlives SIGKILL by 10 s.
        """
        group, self._group = self._group, None
        if group is None:
            return  # never started, or already ended: a pid of ours may be someone else's by now
        deadline = time.monotonic() + 5.0
        sent = signal.SIGTERM
        while True:
            try:
                os.killpg(group, sent)
            except ProcessLookupError:
                break  # the group is empty: every process of it has ended
            except PermissionError:
                break
            if time.monotonic() >= deadline + 10.0:
                raise RuntimeError(f"chromedriver's process group {group} survived SIGKILL for 10 s")
            if time.monotonic() >= deadline:
                sent = signal.SIGKILL
            time.sleep(0.05)
            process = getattr(self._service, "process", None)
            if process is not None:
                process.poll()  # reap the driver itself, or the group never empties
        process = getattr(self._service, "process", None)
        if process is not None:
            process.poll()

    def url(self) -> str:
        """The current page's URL.

        :returns: the URL.
        """
        return str(self.driver.current_url)

    def get(self, url: str) -> None:
        """Load ``url`` and wait for it.

        :param url: the address.
        """
        self.driver.get(url)

    def css(self, selector: str) -> Any:
        """Find one element by CSS selector.

        :param selector: the selector.
        :returns: the element.
        :raises selenium.common.exceptions.NoSuchElementException: if there is none.
        """
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def css_all(self, selector: str) -> list[Any]:
        """Find every element matching a CSS selector.

        :param selector: the selector.
        :returns: the elements (possibly none).
        """
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def text(self, selector: str) -> str:
        """The visible text of the element ``selector`` finds, stripped.

        :param selector: the selector.
        :returns: its text.
        """
        return str(self.css(selector).text).strip()

    def wait(self, condition: Callable[[Any], _T], timeout: float, message: str | Callable[[], str]) -> _T:
        """Wait until ``condition(driver)`` is true (elements replaced meanwhile are looked up again).

        A live page replaces its elements (the overview's refresh), so a
        condition that meets a stale or missing element is simply asked
        again; the deadline is what fails the test.

        :param condition: called with the driver; its first true result is returned.
        :param timeout: seconds.
        :param message: what was awaited (or a callable building it), for the failure.
        :returns: the condition's first true result.
        :raises AssertionError: on timeout (with the page's URL).
        """
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        waiter = WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                               ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        try:
            return waiter.until(condition)
        except TimeoutException:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text} (page {self.url()}):\n"
                                 f"{self.page_text()}") from None

    def wait_text(self, selector: str, expected: str, timeout: float = 20.0) -> str:
        """Wait until the element ``selector`` finds shows exactly ``expected`` (stripped).

        :param selector: the selector.
        :param expected: the text.
        :param timeout: seconds.
        :returns: the text.
        """
        seen: list[str] = []

        def shows(driver: Any) -> str | None:
            text = self.text(selector)
            seen[:] = [text]
            return text if text == expected else None

        return self.wait(shows, timeout, lambda: f"{selector} to show {expected!r} (last seen {seen!r})")

    def wait_for(self, selector: str, timeout: float = 20.0) -> Any:
        """Wait until an element matches ``selector``.

        :param selector: the selector.
        :param timeout: seconds.
        :returns: the element.
        """
        return self.wait(lambda driver: self.css(selector), timeout, f"an element {selector}")

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Save the page as ``screenshots/NN-name.png``.

        :param name: a short label (file-name characters only).
        :param full_page: the whole page, below the fold too (at most 4000
            pixels high; Chromium's ``Page.captureScreenshot`` with
            ``captureBeyondViewport``), else what the window shows.
        :returns: the file written.
        """
        import base64

        self._shots += 1
        path = self.screenshots / f"{self._shots:02d}-{name}.png"
        if full_page:
            metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            clip = {"x": 0, "y": 0, "width": max(1, int(size["width"])),
                    "height": max(1, min(4000, int(size["height"]))), "scale": 1}
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot",
                                               {"format": "png", "captureBeyondViewport": True, "clip": clip})
            path.write_bytes(base64.b64decode(shot["data"]))
        elif not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"the browser saved no screenshot {path}")
        return path

    def set_viewport(self, width: int, height: int) -> None:
        """Size the window so the page's viewport (what a screenshot shows) is ``width`` x ``height``.

        :param width: the viewport's width in CSS pixels.
        :param height: its height.
        """
        self.driver.set_window_size(width, height)
        inner_width, inner_height = self.driver.execute_script("return [window.innerWidth, window.innerHeight];")
        self.driver.set_window_size(2 * width - int(inner_width), 2 * height - int(inner_height))

    def screenshot_as(self, name: str, destination: str | os.PathLike[str], width: int, height: int) -> Path:
        """Save a screenshot at another window size, and copy it to ``destination`` (the README's pictures).

        :param name: the label of the copy kept under ``screenshots/``.
        :param destination: the file to write.
        :param width: the viewport's width for this picture.
        :param height: its height.
        :returns: ``destination``.
        """
        self.set_viewport(width, height)
        try:
            path = self.screenshot(name, full_page=False)
        finally:
            self.driver.set_window_size(self.width, self.height)
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return target

    def page_text(self, limit: int = 2000) -> str:
        """The visible text of the page, cut, for a failure message.

        :param limit: characters kept.
        :returns: the text (or why it could not be read).
        """
        try:
            return str(self.driver.execute_script("return document.body ? document.body.innerText : '';"))[:limit]
        except Exception as error:  # noqa: BLE001 - only a diagnostic
            return f"(page text unavailable: {error})"

    def log_text(self) -> str:
        """What chromedriver (and Chromium, through it) logged, for a failure message.

        :returns: the log's last 4000 characters.
        """
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""
