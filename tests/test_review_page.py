"""The reviewer's web page in Debian's Chromium: sign in with a one-time link, list the
waiting plans, show one in plain language, approve with a click, reject with a reason
using the keyboard only; and what the page refuses (no session, a used link, a form
without its CSRF token, a stranger's TLS pin).

Skipped when Chromium or Playwright is missing, unless ``PPA_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import ssl
import threading
import time
from urllib.parse import urlsplit

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, screenshot_dir
from oracle import join

from ppa_kernel import Consortium
from ppa_kernel.analyst.local import free_ports
from ppa_kernel.analyst.synthetic import generate
from ppa_kernel.contract.errors import ConsortiumError
from ppa_kernel.contract.identity import Identity
from ppa_kernel.party.review_client import ReviewClient

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
REVIEWER = "rita"


def _require_browser() -> None:
    reason = None if CHROMIUM.exists() else f"{CHROMIUM} not found"
    if reason is None and importlib.util.find_spec("playwright") is None:
        reason = "the playwright package is not installed"
    if reason:
        if os.environ.get("PPA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PPA_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def data():
    return generate(n_core=150, seed=3, insurer_extra=0.2, bureau_extra=0.3,
                    hospital_extra=0.1)


@pytest.fixture(scope="module")
def consortium(data, tmp_path_factory):
    _require_browser()
    (port,) = free_ports(1)
    policies = {p: {"differencing": False} for p in data}
    policies["hospital"] = {"approval": "manual", "approval_wait": 120, "differencing": False}
    with Consortium.local(data, workdir=tmp_path_factory.mktemp("review-page"),
                          policies=policies, reviewers=(REVIEWER,),
                          party_options={"hospital": {"review_port": port}}) as c:
        yield c


@pytest.fixture(scope="module")
def hospital(consortium) -> ReviewClient:
    folder = consortium.local_parties.folder
    return ReviewClient(consortium.config, "hospital",
                        Identity.from_prefix(folder / "keys" / REVIEWER))


@pytest.fixture(scope="module")
def signed_in(hospital):
    return hospital.login()


@pytest.fixture(scope="module")
def page(signed_in, tmp_path_factory):
    """Chromium trusting exactly the page's key (its SPKI pin from the signed login)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={signed_in['spki']}"]
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("review-profile")), executable_path=str(CHROMIUM),
            headless=True, args=args, viewport={"width": 1100, "height": 1300})
        context.set_default_timeout(20_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def query(consortium, age: int):
    t = consortium.link()
    return t[t.age >= age].groupby("sex").agg(n=("cost_2021", "count"))


def in_background(q) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = q.collect(timeout=120, progress="off")
        except ConsortiumError as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def wait_listed(hospital: ReviewClient) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for item in hospital.list()["items"]:
            if item.get("status") == "waiting":
                return item["id"]
        time.sleep(0.1)
    raise AssertionError("no plan waiting at the hospital")


def test_sign_in_list_show_and_approve_with_a_click(consortium, data, hospital, signed_in,
                                                    page):
    thread, box = in_background(query(consortium, 40))
    run_id = wait_listed(hospital)
    page.goto(signed_in["url"])
    assert page.title() == "Plans at hospital - ppa review"
    link = page.get_by_role("link", name=run_id)
    assert link.is_visible()
    link.click()
    main = page.locator("main")
    for text in ("insurer.age >= 40", "Opened (exactly these, nothing else)",
                 "release.count:", "Disclosure rules", "Linkage leakage", "Estimated cost"):
        assert text in main.inner_text()
    shot = screenshot_dir() / "review-page.png"
    page.screenshot(path=str(shot), full_page=True)
    page.get_by_role("button", name="Approve").click()
    assert "Plan approved." in page.get_by_role("status").inner_text()
    thread.join(60)
    joined = join(data, ["insurer", "hospital", "bureau"])
    want = joined[joined.age >= 40].groupby("sex")["cost_2021"].count()
    assert box["result"]["n"].astype(int).to_dict() == want.to_dict()
    assert box["result"].attrs["approvers"]["hospital"] == [REVIEWER]


def test_reject_with_a_reason_by_keyboard_only(consortium, hospital, signed_in, page):
    thread, box = in_background(query(consortium, 50))
    run_id = wait_listed(hospital)
    page.goto(signed_in["url"].split("/login")[0] + "/")
    for _ in range(40):  # Tab to the plan's link, as a keyboard user does
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == run_id:
            break
    else:
        raise AssertionError("the plan's link is not reachable with Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/plan/{run_id}")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "reason":
            break
    else:
        raise AssertionError("the reason field is not reachable with Tab")
    page.keyboard.type("age band too narrow for the DPIA")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Reject"
    page.keyboard.press("Enter")
    page.wait_for_url("**done=rejected")
    thread.join(30)
    texts = [str(e) for e in box["error"].errors if e.party == "hospital"]
    assert texts and f"rejected by {REVIEWER}: age band too narrow for the DPIA" in texts[0]


def _connect(url: str, cafile: str | None) -> http.client.HTTPSConnection:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False
    return http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                       timeout=10)


def test_the_page_refuses_strangers(consortium, hospital, signed_in):
    cert = str(consortium.local_parties.folder / "state" / "hospital" / "review-web.crt")
    conn = _connect(signed_in["url"], cert)
    conn.request("GET", "/")
    assert conn.getresponse().status == 401  # no session
    conn = _connect(signed_in["url"], cert)
    conn.request("GET", urlsplit(signed_in["url"]).path + "?" +
                 urlsplit(signed_in["url"]).query)
    assert conn.getresponse().status == 403  # the one-time link was used by the browser
    fresh = hospital.login()
    conn = _connect(fresh["url"], cert)
    conn.request("GET", "/login?" + urlsplit(fresh["url"]).query)
    reply = conn.getresponse()
    assert reply.status == 303
    cookie = reply.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    reply.read()
    conn = _connect(fresh["url"], cert)
    conn.request("POST", "/plan/0123456789abcdef/approve", body="reason=x",
                 headers={"Cookie": cookie.split(";")[0],
                          "Content-Type": "application/x-www-form-urlencoded"})
    assert conn.getresponse().status == 403  # no CSRF token
    with pytest.raises(ssl.SSLError):  # a client that trusts other certificates only
        conn = _connect(fresh["url"], None)
        conn.request("GET", "/")
