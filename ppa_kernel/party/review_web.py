"""The reviewer's web page: a party kernel's waiting plans, in plain language, with
approve, reject and pin buttons. Server-rendered HTML, no scripts, keyboard-usable.

It listens on its own port (``review_port`` in the party file) with TLS. Browsers do not
take the parties' Ed25519 certificates, so the page has its own ECDSA P-256 key and
self-signed certificate in the state folder; its fingerprint reaches the reviewer over
the authenticated channel. Signing in: ``ppa review login`` (a request signed with the
reviewer's identity, checked like every other) returns a one-time link, valid for
:data:`TOKEN_TTL` seconds; opening it sets a session cookie (Secure, HttpOnly,
SameSite=Strict) valid for :data:`SESSION_TTL` seconds. Every form carries the session's
CSRF token. Acts go through the same :class:`~.approvals.Approvals` as the command line and
are recorded as the reviewer's.

The server runs in threads of its own (at most :data:`MAX_CLIENTS` at a time, each
socket with a timeout); what it changes, it changes on the kernel's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ppa_kernel.contract.errors import PPAError
from ppa_kernel.contract.identity import fingerprint

from .review_view import format_params, parse_ranges, when

logger = logging.getLogger(__name__)

TOKEN_TTL = 300.0
SESSION_TTL = 3600.0
MAX_SESSIONS = 32
MAX_CLIENTS = 16
MAX_BODY = 16 * 1024
SOCKET_TIMEOUT = 10.0
REQUEST_DEADLINE = 30.0
"""Seconds one connection may last in all (handshake, request, reply): a client that
trickles bytes, each within SOCKET_TIMEOUT, is cut off then and frees its slot."""
LOOP_TIMEOUT = 10.0
COOKIE = "ppa_review"
"""Prefix of the session cookie's name; the party's name follows, so two parties' pages on
one host (a local demo) keep their sessions apart (cookies are per host, not per port)."""
_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;line-height:1.4}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem;
border-bottom:1px solid #ccc;vertical-align:top}code{font-size:.9em}
a:focus,button:focus,textarea:focus,input:focus{outline:3px solid #1a5fb4;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff}
.note{background:#e8f2e8;padding:.5rem;border-left:4px solid #2e7d32}
.error{background:#fbe9e7;padding:.5rem;border-left:4px solid #c62828}
dt{font-weight:bold;margin-top:.5rem}form{margin:.8rem 0}button{font-size:1rem;padding:.3rem .8rem}
textarea{width:100%;font-size:1rem}
"""


class ReviewWeb:
    """The page of one party kernel (see the module docstring)."""

    def __init__(self, kernel: Any, host: str, port: int, url_host: str,
                 state_dir: Path) -> None:
        self.kernel, self.host, self.port, self.url_host = kernel, host, port, url_host
        self.cookie = f"{COOKIE}_{''.join(c if c.isalnum() else '_' for c in kernel.name)}"
        self.cert_path, self.key_path = web_certificate(state_dir, url_host)
        der = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self.fingerprint = fingerprint(der)
        spki = der.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        self.spki = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.tokens: dict[str, tuple[str, float]] = {}
        self.sessions: dict[str, tuple[str, float, str]] = {}  # id -> reviewer, until, csrf
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        server = _Server((self.host, self.port), _handler(self))
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        self._server = server
        threading.Thread(target=server.serve_forever, name="review-web", daemon=True).start()
        logger.info("reviewer page on https://%s:%s/", self.url_host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------------ signing in
    def login(self, reviewer: str) -> dict[str, Any]:
        """A one-time sign-in link for ``reviewer`` (called on the kernel's loop)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self.tokens = {k: v for k, v in self.tokens.items() if v[1] > now}
            if len(self.tokens) >= MAX_SESSIONS:
                raise PPAError("too many sign-in links are open", hint="retry in a few minutes")
            self.tokens[token] = (reviewer, now + TOKEN_TTL)
        host = f"[{self.url_host}]" if ":" in self.url_host else self.url_host
        return {"event": "login", "url": f"https://{host}:{self.port}/login?token={token}",
                "valid": TOKEN_TTL, "fingerprint": self.fingerprint, "spki": self.spki}

    def redeem(self, token: str) -> tuple[str, str] | None:
        """A new session (id, reviewer) for a valid one-time token, else None."""
        now = time.time()
        with self._lock:
            entry = self.tokens.pop(token, None)
            if entry is None or entry[1] <= now:
                return None
            self.sessions = {k: v for k, v in self.sessions.items() if v[1] > now}
            while len(self.sessions) >= MAX_SESSIONS:
                self.sessions.pop(next(iter(self.sessions)))
            session = secrets.token_urlsafe(32)
            self.sessions[session] = (entry[0], now + SESSION_TTL, secrets.token_urlsafe(24))
        self.kernel.audit.append("review_signed_in", reviewer=entry[0])
        return session, entry[0]

    def session(self, session_id: str | None) -> tuple[str, str] | None:
        """(reviewer, csrf token) of a live session."""
        if not session_id:
            return None
        with self._lock:
            entry = self.sessions.get(session_id)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0], entry[2]

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the kernel's event loop and return its result (bounded wait)."""
        assert self._loop is not None

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(LOOP_TIMEOUT)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    active = 0
    _count_lock = threading.Lock()

    def process_request(self, request, client_address):  # bounded concurrency
        with self._count_lock:
            if self.active >= MAX_CLIENTS:
                self.shutdown_request(request)
                return
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        deadline = threading.Timer(REQUEST_DEADLINE, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            request.settimeout(SOCKET_TIMEOUT)
            request.do_handshake()
            super().process_request_thread(request, client_address)
        except (OSError, ssl.SSLError):
            self.shutdown_request(request)
        finally:
            deadline.cancel()
            with self._count_lock:
                self.active -= 1

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):  # a client gone, or cut off
            logger.debug("review page: connection from %s ended", client_address[0])
        else:
            logger.exception("review page: request from %s failed", client_address[0])


def _cut(sock: socket.socket) -> None:
    """End a connection at its deadline, from another thread: shut the socket itself
    down (not its TLS layer) so the handler's blocked read or write returns."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _handler(web: ReviewWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ppa-review"
        sys_version = ""
        timeout = SOCKET_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("review page: " + format, *args)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            try:
                Page(web, self, method).respond()
            except (ConnectionError, TimeoutError, ssl.SSLError):
                pass

    return Handler


class Page:
    """One request to the reviewer page."""

    def __init__(self, web: ReviewWeb, handler: BaseHTTPRequestHandler, method: str) -> None:
        self.web, self.h, self.method = web, handler, method
        parts = urlsplit(handler.path)
        self.path, self.query = parts.path, parse_qs(parts.query)

    def respond(self) -> None:
        if self.path == "/login" and self.method == "GET":
            return self._login()
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.h.headers.get("Cookie", ""))
        except cookies.CookieError:
            pass
        cookie = self.web.cookie
        found = self.web.session(jar[cookie].value if cookie in jar else None)
        if found is None:
            return self._send(401, _page("Sign in", "<p>Sign in with a one-time link from "
                                         "<code>ppa review login</code>.</p>"))
        self.reviewer, self.csrf = found
        try:
            if self.path == "/" and self.method == "GET":
                return self._send(200, self._listing())
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "plan" and self.method == "GET":
                return self._send(200, self._show(parts[1]))
            if len(parts) == 3 and parts[0] == "plan" and self.method == "POST":
                return self._act(parts[1], parts[2])
        except PPAError as exc:
            return self._send(400, _page("Not done", f'<p class="error" role="alert">'
                                         f"{html.escape(exc.message)}</p>"
                                         '<p><a href="/">Back to the list</a></p>'))
        return self._send(404, _page("Not found", '<p><a href="/">Back to the list</a></p>'))

    # ------------------------------------------------------------------ pages
    def _login(self) -> None:
        token = (self.query.get("token") or [""])[0]
        redeemed = self.web.redeem(token) if len(token) < 100 else None
        if redeemed is None:
            return self._send(403, _page("Link expired", "<p>This sign-in link is not valid "
                                         "(used, expired or mistyped). Get a new one with "
                                         "<code>ppa review login</code>.</p>"))
        self.h.send_response(303)
        self.h.send_header("Location", "/")
        self.h.send_header("Set-Cookie", f"{self.web.cookie}={redeemed[0]}; Secure; HttpOnly; "
                                         f"SameSite=Strict; Path=/; Max-Age={int(SESSION_TTL)}")
        self._headers(0)

    def _listing(self) -> str:
        reply = self.web.on_loop(self.web.kernel.approvals.listing)
        party = html.escape(self.web.kernel.name)
        rows, pins = [], []
        for item in reply:
            if item.get("pin"):
                params = format_params(item["params"]) or "exactly"
                pins.append(f"<tr><td>{html.escape(item['id'])}</td>"
                            f"<td><code>{html.escape(item['plan_hash'][:12])}</code></td>"
                            f"<td>{html.escape(params)}</td><td>{html.escape(item['reviewer'])}"
                            f"</td><td>{'expired' if item['expired'] else _when(item['expires'])}"
                            "</td></tr>")
                continue
            rid = html.escape(item["id"])
            rows.append(f'<tr><td><a href="/plan/{quote(item["id"])}">{rid}</a></td>'
                        f"<td>{html.escape(item['status'])}</td>"
                        f"<td>{html.escape(item['analyst'])}</td><td>{_when(item['asked'])}</td>"
                        f"<td><code>{html.escape(item['plan_hash'][:12])}</code></td></tr>")
        plans = ("<table><caption>Plans</caption><thead><tr><th scope=col>Plan</th>"
                 "<th scope=col>Status</th><th scope=col>Analyst</th><th scope=col>Asked</th>"
                 "<th scope=col>Hash</th></tr></thead><tbody>" + "".join(rows) +
                 "</tbody></table>") if rows else "<p>No plans to review.</p>"
        pinned = ("<table><caption>Pins</caption><thead><tr><th scope=col>Pin</th>"
                  "<th scope=col>Hash</th><th scope=col>May vary</th><th scope=col>By</th>"
                  "<th scope=col>Valid until</th></tr></thead><tbody>" + "".join(pins) +
                  "</tbody></table>") if pins else ""
        mode = html.escape(self.web.kernel.approvals.mode)
        return _page(f"Plans at {party}", f"<p>Signed in as {html.escape(self.reviewer)}. "
                     f"Approval mode: <b>{mode}</b>.</p>{plans}{pinned}")

    def _show(self, item: str) -> str:
        reply = self.web.kernel.review_view(item)
        review, view = reply["item"], reply["view"]
        rid = quote(review["id"])
        self.plan_hash = review["plan_hash"]  # sent back by every form (see _act)
        done = (self.query.get("done") or [""])[0]
        note = f'<p class="note" role="status">Plan {html.escape(done)}.</p>' \
            if done in ("approved", "rejected", "pinned") else ""
        columns = "".join(f"<tr><td>{html.escape(c['name'])}</td>"
                          f"<td>{html.escape(', '.join(c['uses']))}</td>"
                          f"<td>{'yes' if c['yours'] else ''}</td></tr>" for c in view["columns"])
        similar = "".join(f"<li>{html.escape(str(s['run_id']))} by {html.escape(str(s['analyst']))}"
                          f": cohort {html.escape(s['cohort'])}; groups "
                          f"{html.escape(', '.join(s['groups']) or 'none')}</li>"
                          for s in view["similar"]) or "<li>none</li>"
        body = (
            f"{note}<p>From <b>{html.escape(review['analyst'])}</b>, "
            f"{_when(review['asked'])}; status <b>{html.escape(review['status'])}</b>"
            + (f" by {html.escape(review['reviewer'])}" if review.get("reviewer") else "")
            + (f": {html.escape(review['reason'])}" if review.get("reason") else "")
            + f".</p><p>Plan hash <code>{html.escape(review['plan_hash'])}</code></p><dl>"
            f"<dt>Parties</dt><dd>{html.escape(view['parties'])} (linked: "
            f"{html.escape(view['linked'])})</dd>"
            f"<dt>Cohort</dt><dd>{html.escape(view['cohort'])}</dd>"
            f"<dt>Groups</dt><dd>{html.escape(', '.join(view['groups']))}</dd>"
            f"<dt>Statistics</dt><dd><ul>{_items(view['statistics'])}</ul></dd>"
            f"<dt>Opened (exactly these, nothing else)</dt><dd><ul>{_items(view['opened'])}"
            f"</ul></dd><dt>Disclosure rules</dt><dd><ul>{_items(view['disclosure'])}</ul></dd>"
            f"<dt>Linkage leakage</dt><dd>{html.escape(view['linkage'])}</dd>"
            f"<dt>Similar plans released here</dt><dd><ul>{similar}</ul></dd>"
            f"<dt>Estimated cost</dt><dd>{html.escape(view['cost'])}</dd></dl>"
            "<table><caption>Columns and their uses</caption><thead><tr><th scope=col>Column"
            "</th><th scope=col>Uses</th><th scope=col>Yours</th></tr></thead><tbody>"
            f"{columns}</tbody></table>")
        if review["status"] == "waiting":
            body += (f'<h2>Decide</h2><form method="post" action="/plan/{rid}/approve">'
                     f'{self._csrf()}<button type="submit">Approve</button></form>'
                     f'<form method="post" action="/plan/{rid}/reject">{self._csrf()}'
                     '<label for="reason">Reason for rejecting (the analyst sees it)</label>'
                     '<textarea id="reason" name="reason" rows="3" required></textarea>'
                     '<button type="submit">Reject</button></form>')
        if self.web.kernel.approvals.mode != "pinned":
            return _page(f"Plan {html.escape(review['id'])}",
                         body + '<p><a href="/">Back to the list</a></p>')
        numbers = "".join(f"<li><code>{html.escape(p)}</code> = {v:g}</li>"
                          for p, v in view["numbers"].items())
        body += (f'<h2>Pin for reruns</h2><form method="post" action="/plan/{rid}/pin">'
                 f"{self._csrf()}<p>Numbers of this plan: </p><ul>{numbers or '<li>none</li>'}"
                 '</ul><label for="params">Numbers that may vary, one per line as '
                 "<code>PATH=LOW:HIGH</code> (empty: exactly this plan)</label>"
                 '<textarea id="params" name="params" rows="2"></textarea>'
                 '<button type="submit">Pin</button></form><p><a href="/">Back to the list</a></p>')
        return _page(f"Plan {html.escape(review['id'])}", body)

    def _act(self, item: str, act: str) -> None:
        length = self.h.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            return self._send(413, _page("Too large", "<p>The form is too large.</p>"))
        form = parse_qs(self.h.rfile.read(int(length)).decode("utf-8", "replace"))
        sent = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return self._send(403, _page("Refused", "<p>The form is stale; reload the page."
                                         "</p>"))
        approvals = self.web.kernel.approvals
        reason = (form.get("reason") or [""])[0]
        read = (form.get("plan_hash") or [""])[0]  # the plan on the page the form came from
        if act in ("approve", "reject"):
            self.web.on_loop(approvals.decide, item, self.reviewer, act == "approve", reason,
                             read)
            done = "approved" if act == "approve" else "rejected"
        elif act == "pin":
            self.web.on_loop(approvals.pin, item, self.reviewer,
                             parse_ranges((form.get("params") or [""])[0].splitlines()),
                             None, "", read)
            done = "pinned"
        else:
            return self._send(404, _page("Not found", ""))
        self.h.send_response(303)
        self.h.send_header("Location", f"/plan/{quote(item)}?done={done}")
        self._headers(0)

    # ------------------------------------------------------------------ plumbing
    def _csrf(self) -> str:
        return (f'<input type="hidden" name="csrf" value="{html.escape(self.csrf)}">'
                f'<input type="hidden" name="plan_hash" value="{html.escape(self.plan_hash)}">')

    def _send(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.h.send_response(status)
        self.h.send_header("Content-Type", "text/html; charset=utf-8")
        self._headers(len(data))
        self.h.wfile.write(data)

    def _headers(self, length: int) -> None:
        h = self.h
        h.send_header("Content-Length", str(length))
        h.send_header("Cache-Control", "no-store")
        h.send_header("X-Content-Type-Options", "nosniff")
        h.send_header("Referrer-Policy", "no-referrer")
        h.send_header("Content-Security-Policy", "default-src 'none'; style-src "
                      "'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
        h.end_headers()


def _items(values: list[str]) -> str:
    return "".join(f"<li>{html.escape(str(v))}</li>" for v in values)


def _when(stamp: Any) -> str:
    return html.escape(when(stamp))


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport"'
            f' content="width=device-width"><title>{title} - ppa review</title><style>{_STYLE}'
            f'</style></head><body><a class="skip" href="#main">Skip to content</a><main '
            f'id="main"><h1>{title}</h1>{body}</main></body></html>')


def web_certificate(state_dir: Path, host: str) -> tuple[Path, Path]:
    """The page's ECDSA P-256 key and self-signed certificate (made once, kept 0600)."""
    cert_path, key_path = state_dir / "review-web.crt", state_dir / "review-web.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ppa review {host}")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    tmp = key_path.with_name(key_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
