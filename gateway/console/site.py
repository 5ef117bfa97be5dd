"""The console's resource: ``/console`` and everything below it (issue 18).

One leaf resource dispatches on the path (the URLs and the HTML ids are those
of the issue's contract, which the browser tests rely on). Every request is
checked in this order:

1. ``Host`` must be one the gateway serves, and a POST's ``Origin``, when
   the browser sends one, too (403 otherwise: DNS rebinding, cross-site
   posts; the same names as ``/api``, :func:`gateway.httpresources.served_hosts`).
2. Without a users file the console is closed: every request gets a page
   saying so and how to make a user (never an open console).
3. ``/console/static/*`` and ``/console/login`` need no session; any other
   page without a valid session cookie is a 303 to ``/console/login``.
4. A POST must carry the session's CSRF token in the form field ``csrf``
   (403 ``#csrf-refused`` otherwise, audited); an action above the user's
   role is 403 ``#forbidden`` (audited).

The pages read and do everything through a
:class:`~gateway.console.data.ConsoleData`; actions carry an
:class:`~gateway.admin.Operator` (``via="console"``) so the audit trail
names the user. Unlike ``/api``, forms are ``application/x-www-form-urlencoded``
(or ``multipart/form-data`` for the rule tester): the CSRF token replaces
the API's JSON-only rule.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

import jinja2
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.admin import Operator
from gateway.console.auth import SignInThrottle, audit_refusal, audit_sign_in, role_at_least
from gateway.console.data import DeadFilter
from gateway.console.session import COOKIE, Session, SessionSigner
from gateway.console.users import UsersFile, fingerprint, verify_password

__all__ = ["ConsoleResource", "mask", "PRE_COOKIE", "MAX_UPLOADS"]

PRE_COOKIE = b"gw_console_pre"
_HERE = os.path.dirname(os.path.abspath(__file__))
_STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_FIND_BY = ("study", "accession", "patient", "sop")
#: Rule-test uploads under way at once (each takes up to twice ``console.upload_limit`` in the spool).
MAX_UPLOADS = 2
_log = Logger(namespace="gateway.console")


def mask(value: str) -> str:
    """A Patient ID or name as list pages show it to users without ``:phi`` (first character, then ``***``)."""
    return (value[:1] + "***") if value else ""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(at: float | None) -> str:
    if not at:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


def _rate_points(rate: tuple[int, ...], width: int = 120, height: int = 24) -> str:
    """The ``points`` of the overview's rate chart (a polyline, oldest left)."""
    if not rate:
        return ""
    top = max(max(rate), 1)
    step = width / max(len(rate) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(rate))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(_HERE, "templates")),
        autoescape=True,  # every value is HTML-escaped (a destination's error may hold markup)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = _age
    env.filters["when"] = _when
    env.filters["mask"] = mask
    env.filters["rate_points"] = _rate_points
    return env


def _address(request: Request) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer)


def _arg(request: Request, name: str, default: str = "") -> str:
    values = (request.args or {}).get(name.encode("ascii")) or []
    if not values:
        return default
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _args(request: Request, name: str) -> list[str]:
    values = (request.args or {}).get(name.encode("ascii")) or []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


class ConsoleResource(Resource):
    """``/console``: sign-in, the pages and their actions.

    :param data: what the pages read and do.
    :param users: the users file.
    :param signer: sessions and CSRF tokens.
    :param hosts: the ``Host`` names served (:func:`gateway.httpresources.served_hosts`).
    :param clock: wall-clock seconds now (tests inject one).
    :param trail: returns the audit trail (or ``None``).
    :param refresh: seconds between the overview's refreshes.
    :param upload_folder: where the rule tester's uploads go (under the spool).
    :param upload_limit: the most bytes of one upload (the channel refuses more with 413).
    :param run_blocking: runs a blocking call off the reactor thread and returns a Deferred.
    :param settings: returns the current :class:`~gateway.config.schema.ConsoleConfig` (read per
        request, so a reload applies its users file, session durations and refresh; the key, the
        upload limit and ``enabled`` need a restart).
    """

    isLeaf = True

    def __init__(
        self,
        data: Any,
        users: UsersFile,
        signer: SessionSigner,
        hosts: frozenset[str],
        clock: Callable[[], float] = time.time,
        trail: Callable[[], Any] = lambda: None,
        refresh: float = 5.0,
        upload_folder: str = "",
        upload_limit: int = 64 * 1024 * 1024,
        run_blocking: Callable[[Callable[[], Any]], "Deferred[Any]"] | None = None,
        settings: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.users = users
        self.signer = signer
        self.hosts = hosts
        self.clock = clock
        self.trail = trail
        self.refresh = refresh
        self.upload_folder = upload_folder
        self.upload_limit = upload_limit
        #: Uploads accepted by :meth:`may_upload` and not yet answered (or cut).
        self.uploads = 0
        self.throttle = SignInThrottle(clock)
        if run_blocking is None:
            from twisted.internet.threads import deferToThread

            run_blocking = deferToThread
        self.run_blocking = run_blocking
        self.settings = settings
        self.env = _environment()

    def _apply_settings(self) -> None:
        """Follow a reloaded ``console`` section (users file, session durations, refresh)."""
        if self.settings is None:
            return
        config = self.settings()
        if config.users_file != self.users.path:
            self.users = UsersFile(config.users_file)
        self.signer.timeout = config.session_timeout
        self.signer.lifetime = config.session_lifetime
        self.refresh = config.refresh

    # -- answers ---------------------------------------------------------------------------

    def _html(self, request: Request, template: str, status: int = 200, **values: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # same-origin: the URLs (which may hold a search term) never go to another site. Not "no-referrer":
        # with it, browsers send "Origin: null" on our own form posts, which the Origin check refuses.
        request.setHeader(b"referrer-policy", b"same-origin")
        # Only our own script and style (no inline script): a stored markup injection cannot run.
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
        values.setdefault("node", getattr(self.data, "node", ""))
        values.setdefault("me", None)
        values.setdefault("csrf", "")
        return self.env.get_template(template).render(**values).encode("utf-8")

    def _redirect(self, request: Request, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def _message(self, request: Request, status: int, element: str, title: str, text: str, me: Any = None, csrf: str = "") -> bytes:
        return self._html(request, "message.html", status, element=element, title=title, text=text, me=me, csrf=csrf)

    def _refuse(self, request: Request, me: Any, element: str, reason: str) -> bytes:
        audit_refusal(self.trail(), _address(request), me.name if me is not None else "", reason, request.path.decode("utf-8", "replace"))
        titles = {"forbidden": "Not allowed", "csrf-refused": "Form refused"}
        texts = {
            "forbidden": f"Your role may not do this ({reason}).",
            "csrf-refused": "The form had no valid security token (it was too old, or sent from another site). Go back, reload the page and try again.",
        }
        return self._message(request, 403, element, titles.get(element, "Refused"), texts.get(element, reason), me=me,
                             csrf=self.signer.csrf(me.sid) if me is not None else "")

    def _async(self, request: Request, d: "Deferred[Any]", done: Callable[[Any], bytes], me: Any = None) -> Any:
        def answer(result: Any) -> None:
            body = done(result)
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(ValueError):
                # A value the data layer cannot use (a reason that is no kind, a malformed cursor): the request's fault.
                body = self._message(request, 400, "bad-request", "Bad request", str(failure.value), me=me,
                                     csrf=self.signer.csrf(me.sid) if me is not None else "")
            elif failure.check(KeyError):
                body = self._message(request, 404, "not-found", "Not found", "There is no such record (it may have been acted on already).", me=me,
                                     csrf=self.signer.csrf(me.sid) if me is not None else "")
            else:
                _log.failure("console page failed", failure)
                body = self._message(request, 500, "error", "Error", "The page could not be made; the gateway's log says why.", me=me,
                                     csrf=self.signer.csrf(me.sid) if me is not None else "")
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        d.addCallback(answer)
        d.addErrback(failed)
        d.addErrback(lambda f: _log.failure("console answer failed", f))
        return NOT_DONE_YET

    # -- dispatch ----------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Re-read the users file off the reactor thread, then :meth:`_render` the request.

        The users file is stat'ed on every request and read and parsed when it
        changed (up to 4 MiB): blocking file work, done by ``run_blocking``
        (the reactor also serves DICOM); the checks then use what was read.
        """
        self._apply_settings()
        d = self.run_blocking(self.users.refresh)
        fired: list[Any] = []
        d.addBoth(fired.append)
        if fired:  # a runner that ran in line (tests): answer now
            if isinstance(fired[0], Failure):
                _log.failure("console users file refresh failed", fired[0])
            return self._render(request)

        def go(result: Any) -> None:
            if isinstance(result, Failure):
                _log.failure("console users file refresh failed", result)
            if request.finished or getattr(request, "_disconnected", False):
                return
            body = self._render(request)
            if body is not NOT_DONE_YET and not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        d.addCallback(lambda _: go(fired[0]))
        d.addErrback(lambda f: _log.failure("console answer failed", f))
        return NOT_DONE_YET

    def _render(self, request: Request) -> Any:
        """Check the request (host, origin, users, session, CSRF, role) and answer its page."""
        from gateway.httpresources import _host_name, _origin_host

        if _host_name(request.getHeader(b"host")) not in self.hosts:
            return self._message(request, 403, "host-refused", "Refused", "This Host is not served (add it to http.allowed_hosts).")
        method = request.method
        origin = request.getHeader(b"origin")
        if method == b"POST" and origin is not None and _origin_host(origin) not in self.hosts:
            audit_refusal(self.trail(), _address(request), "", "foreign origin", request.path.decode("utf-8", "replace"))
            return self._message(request, 403, "origin-refused", "Refused", "Requests from other sites are refused.")
        parts = [p.decode("utf-8", "replace") for p in request.postpath]
        while parts and parts[-1] == "" and len(parts) > 1:
            parts.pop()
        if parts[:1] == ["static"] and len(parts) == 2 and parts[1] in _STATIC and method in (b"GET", b"HEAD"):
            return self._static(request, parts[1])
        if not self.users.path or not self.users.known():
            # Never an open console: without a usable user, every page says how to make one.
            why = "No users are configured" if not self.users.path else "The users file has no usable user"
            return self._message(
                request, 503, "no-users", "No console users",
                f"{why}, so the console is closed. Make one with "
                "'dicom-gateway console-user NAME --role admin --file /etc/dicom-gateway/console-users' "
                "and set console.users_file to that file (it is re-read when it changes).",
            )
        if parts[:1] == ["login"]:
            return self._login(request)
        # The overview's automatic refresh is no activity of the user: it does not renew the idle timeout
        # (an overview left open on a screen still signs out after console.session_timeout).
        me = self._session(request, renew=parts != ["overview.part"])
        if me is None:
            return self._redirect(request, "/console/login")
        if method == b"POST":
            if parts == ["rules"]:
                return self._rules_post(request, me)
            if not self.signer.csrf_ok(me.sid, _arg(request, "csrf") or None):
                return self._refuse(request, me, "csrf-refused", "missing or invalid CSRF token")
            return self._post(request, me, parts)
        if method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, POST")
            return b""
        return self._get(request, me, parts)

    def may_upload(self, request: Request) -> "bool | str":
        """Whether an upload's headers may send its body: a served Host, a signed-in session, a free place.

        Called by the channel when the headers of ``POST /console/rules`` are in
        (:attr:`gateway.httpguard.GatewaySite.upload_gate`), so nobody can fill
        the spool without signing in; the CSRF token is checked after the body.
        At most :data:`MAX_UPLOADS` uploads are under way at once (each takes
        up to twice ``upload_limit`` in the spool: the body, then the file part),
        so signed-in clients cannot fill the spool with parallel uploads: a
        further one gets a 503 (these words).
        """
        from gateway.httpresources import _host_name

        if _host_name(request.getHeader(b"host")) not in self.hosts:
            return False
        session = self.signer.decode(request.getCookie(COOKIE), self.clock())
        if session is None:
            return False
        user = self.users.known_user(session.user)
        if user is None or fingerprint(user) != session.fingerprint:
            return False
        if self.uploads >= MAX_UPLOADS:
            return f"{MAX_UPLOADS} rule-test uploads are under way already: try again in a moment"
        self.uploads += 1

        def ended(_: Any) -> None:
            self.uploads -= 1

        request.notifyFinish().addBoth(ended)
        return True

    def _static(self, request: Request, name: str) -> bytes:
        with open(os.path.join(_HERE, "static", name), "rb") as handle:
            body = handle.read()
        request.setHeader(b"content-type", _STATIC[name].encode("ascii"))
        request.setHeader(b"cache-control", b"max-age=300")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return body

    def _session(self, request: Request, renew: bool = True) -> "_Me | None":
        now = self.clock()
        session = self.signer.decode(request.getCookie(COOKIE), now)
        if session is None:
            return None
        user = self.users.known_user(session.user)
        if user is None or fingerprint(user) != session.fingerprint:
            return None  # the user was removed, or the password or role changed
        if renew and now - session.last_used > 5:
            # Renew the idle timeout (re-issue the cookie with the time of this request).
            self._set_cookie(request, Session(session.sid, session.user, session.fingerprint, session.started, now))
        return _Me(user.name, user.role, user.show_phi, session.sid, _address(request))

    def _set_cookie(self, request: Request, session: Session | None) -> None:
        value = self.signer.encode(session) if session is not None else b"deleted"
        request.addCookie(
            COOKIE, value, path=b"/console", httpOnly=True, sameSite="strict", secure=request.isSecure(),
            **({} if session is not None else {"max_age": b"0"}),
        )

    # -- sign-in ---------------------------------------------------------------------------

    def _login(self, request: Request) -> Any:
        if request.method == b"POST":
            return self._login_post(request)
        pre = request.getCookie(PRE_COOKIE)
        pre_id = pre.decode("ascii", "replace") if pre and len(pre) <= 64 else ""
        if not pre_id:
            pre_id = secrets.token_urlsafe(18)
            request.addCookie(PRE_COOKIE, pre_id.encode("ascii"), path=b"/console", httpOnly=True, sameSite="strict", secure=request.isSecure())
        return self._html(request, "login.html", csrf=self.signer.csrf("pre:" + pre_id), error="", user="")

    def _login_post(self, request: Request) -> Any:
        pre = (request.getCookie(PRE_COOKIE) or b"").decode("ascii", "replace")
        name = _arg(request, "user").strip()[:64]
        peer = _address(request)
        if not pre or not self.signer.csrf_ok("pre:" + pre, _arg(request, "csrf") or None):
            return self._refuse(request, None, "csrf-refused", "sign-in form without a valid CSRF token")
        csrf = self.signer.csrf("pre:" + pre)
        host = getattr(request.getClientAddress(), "host", peer)
        if self.throttle.locked(name, host):
            audit_sign_in(self.trail(), peer, name, False, "too many failed sign-ins: locked for a minute")
            return self._html(request, "login.html", 429, csrf=csrf, user=name,
                              error="Too many failed sign-ins: wait a minute and try again.")
        user = self.users.known_user(name)
        password = _arg(request, "password")
        # scrypt costs tens of milliseconds by design: off the reactor thread, which also serves DICOM.
        # An unknown name is checked against a dummy hash, so timing does not tell which names exist.
        stored = user.password_hash if user is not None else _DUMMY_HASH
        d = self.run_blocking(lambda: verify_password(password, stored))

        def checked(ok: bool) -> bytes:
            if not ok or user is None:
                self.throttle.failed(name, host)
                audit_sign_in(self.trail(), peer, name, False, "console sign-in refused: unknown user or wrong password")
                return self._html(request, "login.html", 200, csrf=csrf, user=name, error="Unknown user or wrong password.")
            self.throttle.succeeded(name)
            audit_sign_in(self.trail(), peer, name, True, "console sign-in accepted")
            self._set_cookie(request, self.signer.new(user.name, fingerprint(user), self.clock()))
            return self._redirect(request, "/console/")

        return self._async(request, d, checked)

    # -- pages -------------------------------------------------------------------------------

    def _page(self, request: Request, template: str, me: "_Me", status: int = 200, **values: Any) -> bytes:
        return self._html(request, template, status, me=me, csrf=self.signer.csrf(me.sid), refresh=self.refresh, **values)

    def _get(self, request: Request, me: "_Me", parts: list[str]) -> Any:
        if parts in ([], [""]):
            return self._async(request, self.data.overview(), lambda o: self._page(
                request, "overview.html", me, overview=o, flash=_flash(request)), me)
        if parts == ["overview.part"]:
            return self._async(request, self.data.overview(), lambda o: self._page(request, "overview_part.html", me, overview=o), me)
        if parts == ["find"]:
            return self._find(request, me)
        if parts == ["dead-letters"]:
            return self._dead_letters(request, me)
        if len(parts) == 2 and parts[0] == "dead-letters":
            try:
                entry_id = int(parts[1])
            except ValueError:
                return self._message(request, 404, "not-found", "Not found", "No such dead letter.", me=me, csrf=self.signer.csrf(me.sid))
            return self._async(request, self.data.dead_letter(entry_id), lambda e: self._page(
                request, "dead_detail.html", me, entry=e, destinations=self.data.destinations(), now=self.clock()), me)
        if parts == ["rules"]:
            return self._page(request, "rules.html", me, routes=self.data.routes(), report=None, error="")
        if parts == ["audit"]:
            event = _arg(request, "event").strip() or None
            ae = _arg(request, "ae").strip() or None
            before = _arg(request, "before").strip() or None
            return self._async(request, self.data.audit(event, ae, before), lambda page: self._page(
                request, "audit.html", me, page=page, event=event or "", ae=ae or "",
                next_url="/console/audit?" + urlencode({"event": event or "", "ae": ae or "", "before": page.next_before})
                if page.next_before else ""), me)
        return self._message(request, 404, "not-found", "Not found", "There is no such page.", me=me, csrf=self.signer.csrf(me.sid))

    def _find(self, request: Request, me: "_Me") -> Any:
        by = _arg(request, "by", "study")
        query = _arg(request, "q").strip()
        if by not in _FIND_BY:
            by = "study"
        if not query:
            return self._page(request, "find.html", me, by=by, q="", found=None)
        return self._async(request, self.data.find(by, query), lambda found: self._page(
            request, "find.html", me, by=by, q=query, found=found), me)

    def _dead_filter(self, request: Request) -> tuple[DeadFilter, dict[str, str], str]:
        """The filter of the dead-letter page (and of its actions), its fields as given, and a problem."""
        from gateway.config.durations import parse_duration

        given = {k: _arg(request, k).strip() for k in ("destination", "reason", "route", "older_than")}
        problem = ""
        before = None
        if given["older_than"]:
            try:
                before = self.clock() - parse_duration(given["older_than"])
            except (ValueError, TypeError) as error:
                problem = f"older than: {error}"
                given["older_than"] = ""
        where = DeadFilter(given["destination"] or None, given["reason"] or None, given["route"] or None, before)
        return where, given, problem

    def _dead_letters(self, request: Request, me: "_Me") -> Any:
        where, given, problem = self._dead_filter(request)
        cursor = _arg(request, "before").strip()
        before = int(cursor) if cursor.isdigit() else None

        from gateway.queue.outcome import DeadLetterKind

        def page(result: Any) -> bytes:
            next_url = ""
            if result.next_before is not None:
                next_url = "/console/dead-letters?" + urlencode({**given, "before": result.next_before})
            return self._page(request, "dead.html", me, page=result, filter=given, problem=problem, next_url=next_url,
                              destinations=self.data.destinations(), routes=[r.name for r in self.data.routes()],
                              reasons=[kind.value for kind in DeadLetterKind], now=self.clock(), flash=_flash(request))

        return self._async(request, self.data.dead_letters(where, before), page, me)

    # -- actions -----------------------------------------------------------------------------

    def _post(self, request: Request, me: "_Me", parts: list[str]) -> Any:
        operator = Operator(who=me.name, address=me.address, via="console")
        if parts == ["logout"]:
            audit_sign_in(self.trail(), me.address, me.name, True, "console sign-out")
            self._set_cookie(request, None)
            return self._redirect(request, "/console/login")
        if len(parts) == 3 and parts[0] == "destinations" and parts[2] in ("pause", "resume"):
            if not role_at_least(me.role, "operator"):
                return self._refuse(request, me, "forbidden", f"{parts[2]} needs the operator role")
            if parts[1] not in self.data.destinations():
                return self._message(request, 404, "not-found", "Not found", "No such destination.", me=me, csrf=self.signer.csrf(me.sid))
            d = self.data.pause(parts[1], parts[2] == "pause", operator)
            return self._async(request, d, lambda _: self._redirect(
                request, "/console/?" + urlencode({"done": parts[2], "n": 1})), me)
        if parts == ["reload"]:
            if not role_at_least(me.role, "admin"):
                return self._refuse(request, me, "forbidden", "reload needs the admin role")
            return self._async(request, self.data.reload(operator), lambda applied: self._redirect(
                request, "/console/?" + urlencode({"done": "reload" if applied else "reload-failed", "n": 1})), me)
        if parts == ["dead-letters", "action"]:
            return self._dead_action(request, me, operator)
        return self._message(request, 404, "not-found", "Not found", "There is no such action.", me=me, csrf=self.signer.csrf(me.sid))

    def _dead_action(self, request: Request, me: "_Me", operator: Operator) -> Any:
        action = _arg(request, "action")
        if action not in ("retry", "purge"):
            return self._message(request, 400, "bad-request", "Bad request", "The action must be retry or purge.", me=me, csrf=self.signer.csrf(me.sid))
        if not role_at_least(me.role, "operator"):
            return self._refuse(request, me, "forbidden", f"{action} needs the operator role")
        where, given, problem = self._dead_filter(request)
        scope = _arg(request, "scope", "selected")
        to = _arg(request, "to").strip() or None
        if to is not None and to not in self.data.destinations():
            return self._message(request, 400, "bad-request", "Bad request", "No such destination to re-target to.", me=me, csrf=self.signer.csrf(me.sid))
        try:
            ids = sorted({int(i) for i in _args(request, "ids")})
        except ValueError:
            return self._message(request, 400, "bad-request", "Bad request", "Entry ids are numbers.", me=me, csrf=self.signer.csrf(me.sid))
        if problem:
            return self._message(request, 400, "bad-request", "Bad request", problem, me=me, csrf=self.signer.csrf(me.sid))
        # A re-target no route would make is refused per entry (the privacy promise: a copy goes only
        # where the rules say) unless forced, which only an admin may do (the API's force, audited as forced).
        force = _arg(request, "force") == "yes" and to is not None
        if force and not role_at_least(me.role, "admin"):
            return self._refuse(request, me, "forbidden", "a forced re-target needs the admin role")
        by_filter = scope == "filter"
        if not by_filter and not ids:
            return self._redirect(request, "/console/dead-letters?" + urlencode({**given, "done": "none", "n": 0}))
        back = {k: v for k, v in given.items() if v}
        if _arg(request, "confirmed") != "yes" and (by_filter or len(ids) > 1):
            counted: Deferred[int] = self.data.count_dead(where) if by_filter else maybeDeferred(lambda: len(ids))

            def confirm(count: int) -> bytes:
                from gateway.console.data import BULK_LIMIT

                return self._page(request, "confirm.html", me, action=action, to=to or "", scope=scope, ids=ids,
                                  filter=given, count=count, limit=BULK_LIMIT, force=force)

            return self._async(request, counted, confirm, me)
        if action == "retry":
            d = self.data.retry(None if by_filter else ids, where if by_filter else None, to, operator, force=force)
        else:
            d = self.data.purge(None if by_filter else ids, where if by_filter else None, operator)

        def done(result: Any) -> bytes:
            verb = "retarget" if (action == "retry" and to) else action
            query = {**back, "done": verb, "n": len(result.changed), "failed": len(result.failed)}
            if result.truncated:
                query["truncated"] = 1
            return self._redirect(request, "/console/dead-letters?" + urlencode(query))

        return self._async(request, d, done, me)

    def _rules_post(self, request: Request, me: "_Me") -> Any:
        from gateway.console.upload import MultipartError, read_form

        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        body = request.content
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            # A plain form (the spool pick without a file). The channel streamed the body to a file
            # and left it unparsed (gateway.httpguard): read its first 64 KiB as a urlencoded form.
            from urllib.parse import parse_qs

            body.seek(0)
            fields = {k: v[0] for k, v in parse_qs(body.read(65536).decode("utf-8", "replace")).items()}
            if not self.signer.csrf_ok(me.sid, fields.get("csrf") or None):
                return self._refuse(request, me, "csrf-refused", "missing or invalid CSRF token")
            return self._rules_check(request, me, {"instance": fields.get("instance", "")}, None)
        folder = self.upload_folder

        def parse() -> Any:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            return read_form(body, content_type, folder)

        def parsed(form: Any) -> Any:
            if not self.signer.csrf_ok(me.sid, form.fields.get("csrf") or None):
                form.discard()
                body = self._refuse(request, me, "csrf-refused", "missing or invalid CSRF token")
                return succeed_bytes(body)
            return self._rules_check(request, me, form.fields, form, deferred=True)

        def bad(failure: Failure) -> bytes:
            failure.trap(MultipartError, OSError)
            return self._page(request, "rules.html", me, 400, routes=self.data.routes(), report=None,
                              error=f"The upload could not be read: {failure.getErrorMessage()[:200]}")

        d = self.run_blocking(parse)
        d.addCallbacks(parsed, bad)
        return self._async(request, d, lambda body: body, me)

    def _rules_check(self, request: Request, me: "_Me", fields: Mapping[str, str], form: Any, deferred: bool = False) -> Any:
        instance = (fields.get("instance") or "").strip()
        if form is not None and form.file_path and form.file_size > 0:
            d = self.data.check(form.file_path)

            def cleanup(result: Any) -> Any:
                form.discard()  # the uploaded file is deleted after the check, whatever its outcome
                return result

            d.addBoth(cleanup)
        elif instance:
            if form is not None:
                form.discard()
            d = self.data.spool_file(instance)
            d.addCallback(lambda path: self.data.check(path))
        else:
            if form is not None:
                form.discard()
            body = self._page(request, "rules.html", me, 400, routes=self.data.routes(), report=None,
                              error="Choose a file to upload or give a spooled instance id.")
            return succeed_bytes(body) if deferred else body

        def shown(check: Any) -> bytes:
            return self._page(request, "rules.html", me, routes=self.data.routes(), report=check.report, error="")

        def missing(failure: Failure) -> bytes:
            failure.trap(KeyError)
            return self._page(request, "rules.html", me, 404, routes=self.data.routes(), report=None,
                              error="There is no spooled instance with that id.")

        d.addCallback(shown)
        d.addErrback(missing)
        return d if deferred else self._async(request, d, lambda body: body, me)


def succeed_bytes(body: bytes) -> "Deferred[bytes]":
    """A fired Deferred of a page body."""
    from twisted.internet.defer import succeed

    return succeed(body)


_FLASH = {
    "retry": "Retried {n} dead letter(s).",
    "retarget": "Re-targeted {n} dead letter(s).",
    "purge": "Purged {n} dead letter(s).",
    "pause": "Destination paused.",
    "resume": "Destination resumed.",
    "reload": "Configuration reloaded.",
    "reload-failed": "The configuration was not reloaded (see the log).",
    "none": "Nothing was selected.",
}


def _flash(request: Request) -> str:
    """The message after an action (from fixed words and counts, never from text in the URL)."""
    done = _arg(request, "done")
    if done not in _FLASH:
        return ""
    n = _arg(request, "n")
    text = _FLASH[done].format(n=int(n) if n.isdigit() else 0)
    failed = _arg(request, "failed")
    if failed.isdigit() and int(failed):
        text += f" {int(failed)} could not be changed."
    if _arg(request, "truncated"):
        text += " The filter matched more than the bulk limit: run it again for the rest."
    return text


class _Me:
    """The signed-in user of a request."""

    __slots__ = ("name", "role", "show_phi", "sid", "address")

    def __init__(self, name: str, role: str, show_phi: bool, sid: str, address: str) -> None:
        self.name = name
        self.role = role
        self.show_phi = show_phi
        self.sid = sid
        self.address = address

    def can(self, role: str) -> bool:
        """Whether the user's role is at least ``role``."""
        return role_at_least(self.role, role)


# A well-formed hash no password matches, checked for unknown names (same cost as a real check).
_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32
