"""The usage dashboard (`GET /`) as a user sees it, in headless Chromium, against the local server
binary (embedded store, simulated providers).

GIVEN a user with an org that has usage on two models (some of it through an API key, one request
a provider error) and a second, empty org; WHEN they sign in through the page and pick the org;
THEN the page shows exactly what `/api/v1/ai/usage` and `/api/v1/ai/requests` answer, its API keys
work as the page says (a new key's secret is shown once and works; a revoked key gets 401), empty
states and other months read right, and nothing overflows a phone's width.

Needs LOCAL_SERVER_BIN (default: target/debug/local-server) and Chromium at /usr/bin/chromium
(Debian's package; `bash infra/scripts/test.sh` installs it). Screenshots go to
$DASHBOARD_SCREENSHOTS, else to pytest's tmp path; their paths are printed (`pytest -s` shows them).
"""

import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import local_server
from playwright.sync_api import expect, sync_playwright

REPO_ROOT = local_server.REPO_ROOT
CHROMIUM = "/usr/bin/chromium"
ADMIN = "op-token"
EMAIL = "dash@example.com"
PASSWORD = "correct horse battery"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A plan with a small message cap (so the bar shows) and no token cap (so "Unlimited" shows),
# roomy enough per minute that the test's chats are never throttled.
PLANS = """
[plans.dash]
requests_per_minute = 100
messages_per_month = 20
tokens_per_month = "unlimited"
max_tokens_per_request = 1024
models = "all"
"""


def _call(method, url, body=None, token=None, org=None, form=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if org:
        headers["X-Current-Org"] = org
    data = None if body is None else json.dumps(body).encode()
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def fmt_int(n):
    return f"{n:,}"


def fmt_cost(cents):
    """The page's dollars-from-cents: two decimals from $1, else enough digits to never read $0.00."""
    if cents == 0:
        return "$0.00"
    dollars = abs(cents) / 100
    if dollars >= 1:
        text = f"{dollars:,.2f}"
    else:
        digits = 4 if dollars >= 0.01 else min(12, 2 - math.floor(math.log10(dollars)))
        text = re.sub(r"(\.\d\d\d*?)0+$", r"\1", f"{dollars:.{digits}f}")
    return ("-$" if cents < 0 else "$") + text


def percent(used, limit):
    return math.floor(used * 100 / limit + 0.5)


def shift_month(month, delta):
    year, mon = map(int, month.split("-"))
    index = year * 12 + mon - 1 + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


class Gateway:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, token=None, org=None, form=None):
        return _call(method, f"{self.base}{path}", body, token, org, form)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "gateway.toml"
    config.write_text(PLANS)
    env = local_server.clean_env(GATEWAY_CONFIG=str(config), GATEWAY_ADMIN_TOKEN=ADMIN)
    log_path = tmp_path_factory.mktemp("logs") / "local-server.log"
    with local_server.running(env, log_path) as base:
        yield Gateway(base)


@pytest.fixture(scope="module")
def seeded(gateway):
    """A user, an org on the `dash` plan with usage on two models (user token and API key, one
    provider error), and an empty org on the default plan; with what the API reports for them."""
    status, body = gateway.call("POST", "/api/v1/auth/register", {"email": EMAIL, "password": PASSWORD})
    assert status == 201, body
    token = body["access_token"]
    status, org = gateway.call("POST", "/api/v1/orgs", {"name": "Acme Robotics", "slug": "acme-robotics"}, token)
    assert status == 201, org
    status, body = gateway.call("PUT", f"/admin/orgs/{org['id']}/plan", {"plan": "dash"}, ADMIN)
    assert status == 200, body
    status, empty = gateway.call("POST", "/api/v1/orgs", {"name": "Side Project", "slug": "side-project"}, token)
    assert status == 201, empty
    status, key = gateway.call("POST", f"/api/v1/orgs/{org['id']}/api-keys", {"name": "ci-key"}, token)
    assert status == 201, key

    def chat(model, text):
        return gateway.call("POST", "/api/v1/ai/chat",
                            {"messages": [{"role": "user", "content": text}], "model": model}, token, org["id"])

    for i in range(3):
        status, body = chat("gpt-4o-mini", f"Say hello number {i}")
        assert status == 200, body
    status, body = chat("gemini-1.5-flash", "Tell me about DynamoDB counters")
    assert status == 200, body
    for i in range(2):
        status, body = gateway.call("POST", "/v1/chat/completions",
                                    {"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": f"Key call {i}"}]},
                                    key["key"])
        assert status == 200, body
    # A request the provider refuses: recorded as an error, no message used.
    status, body = chat("gpt-4o-mini", "[sim:status=400] please fail")
    assert status >= 400, body

    status, usage = gateway.call("GET", "/api/v1/ai/usage", token=token, org=org["id"])
    assert status == 200, usage
    status, requests = gateway.call("GET", "/api/v1/ai/requests?limit=20", token=token, org=org["id"])
    assert status == 200, requests
    status, empty_usage = gateway.call("GET", "/api/v1/ai/usage", token=token, org=empty["id"])
    assert status == 200, empty_usage

    # What the page will be checked against is itself what the test made.
    assert usage["total_messages"] == 6, usage
    assert usage["messages_limit"] == 20 and usage["tokens_limit"] is None, usage
    assert set(usage["models_breakdown"]) == {"gpt-4o-mini", "gemini-1.5-flash"}, usage
    assert len(usage["daily"]) >= 2, usage
    assert len(requests["requests"]) == 7, requests
    assert sum(1 for r in requests["requests"] if r["api_key_id"] == key["id"]) == 2, requests
    assert any(r["status"] == "error" for r in requests["requests"]), requests
    assert empty_usage["total_messages"] == 0 and empty_usage["daily"] == [], empty_usage
    return {"token": token, "org": org, "empty": empty, "key": key, "usage": usage,
            "requests": requests["requests"], "empty_usage": empty_usage}


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    folder = os.environ.get("DASHBOARD_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("dashboard-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshots(screenshot_dir, capsys):
    """Where screenshots go, and a way to print their paths past pytest's output capture."""

    def announce(path):
        with capsys.disabled():
            print(f"\nscreenshot: {path}")

    return screenshot_dir, announce


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash infra/scripts/test.sh` installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Tab:
    """A browser tab on the gateway, recording console errors and every URL the page asked for."""

    def __init__(self, browser, base, viewport=LAPTOP):
        self.base = base
        self.context = browser.new_context(viewport=viewport, color_scheme="light")
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors = []
        self.urls = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("request", lambda r: self.urls.append(r.url))

    def open(self, path="/"):
        response = self.page.goto(f"{self.base}{path}")
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")

    def sign_in(self, email=EMAIL, password=PASSWORD):
        page = self.page
        form = page.locator("#login-form")
        form.get_by_label("Email").fill(email)
        form.get_by_label("Password").fill(password)
        form.get_by_role("button", name="Sign in", exact=True).click()

    def shoot(self, screenshots, name):
        folder, announce = screenshots
        path = folder / name
        self.page.screenshot(path=str(path), full_page=True)
        announce(path)
        return path

    def assert_fits_width(self):
        widths = self.page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"horizontal overflow: scrollWidth {widths[0]} > innerWidth {widths[1]}"

    def close(self):
        self.context.close()
        assert self.errors == [], f"console errors: {self.errors}"
        foreign = [u for u in self.urls if not (u.startswith(self.base + "/") or u.startswith("data:"))]
        assert foreign == [], f"the page loaded something from elsewhere: {foreign}"


def test_the_page_is_served_as_one_self_contained_html_file(gateway):
    with urllib.request.urlopen(f"{gateway.base}/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        # What keeps the page from loading or calling anything but this origin.
        policy = response.headers["Content-Security-Policy"] or ""
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy, policy
        html = response.read().decode()
    assert html.lstrip().lower().startswith("<!doctype html>")
    # No CDN, no external script, style, font or image: the page is the whole product.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I), "external resource in the page"
    assert "<script src" not in html.lower()


def test_a_user_signs_in_and_sees_usage_requests_and_keys(gateway, seeded, browser, screenshots):
    usage, requests, org, key = seeded["usage"], seeded["requests"], seeded["org"], seeded["key"]
    tab = Tab(browser, gateway.base)
    page = tab.page
    tab.open()

    # GIVEN the sign-in form: a wrong password is refused in place.
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    tab.shoot(screenshots, "login-laptop.png")
    tab.sign_in(password="not the password")
    expect(page.locator("#login-error")).to_have_text("Incorrect email or password.")
    expect(page.locator("#view-dashboard")).to_be_hidden()
    # The browser itself logs the refused request; nothing else may have logged.
    assert all("401" in e for e in tab.errors), tab.errors
    tab.errors.clear()

    # WHEN the user signs in and picks the org (they have two, so the page asks).
    tab.sign_in()
    expect(page.get_by_role("heading", name="Choose an organization")).to_be_visible()
    expect(page.locator(".org-item")).to_have_count(2)
    page.locator(f'.org-item[data-org-id="{org["id"]}"]').click()
    expect(page.locator("#dash-title")).to_have_text("Acme Robotics")
    assert page.evaluate("sessionStorage.getItem('gateway.token')"), "the token is kept in sessionStorage"

    # THEN the month's totals against the plan's limits are the API's.
    expect(page.get_by_test_id("stat-messages-used")).to_have_text(fmt_int(usage["total_messages"]))
    expect(page.get_by_test_id("stat-messages-limit")).to_have_text(fmt_int(usage["messages_limit"]))
    expect(page.get_by_test_id("stat-tokens-used")).to_have_text(fmt_int(usage["total_tokens"]))
    expect(page.get_by_test_id("stat-tokens-limit")).to_have_text("Unlimited")
    expect(page.get_by_test_id("stat-messages").get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", str(percent(usage["total_messages"], usage["messages_limit"])))
    expect(page.get_by_test_id("stat-tokens").get_by_role("progressbar")).to_have_count(0)
    expect(page.get_by_test_id("stat-cost-value")).to_have_text(fmt_cost(usage["total_cost"]))
    assert usage["total_cost"] > 0 and fmt_cost(usage["total_cost"]) != "$0.00"
    expect(page.get_by_test_id("stat-plan-name")).to_have_text("Dash")
    expect(page.get_by_test_id("usage-percentage")).to_have_text(
        f"{math.floor(usage['usage_percentage'] + 0.5)}% of the monthly allowance used")

    # One row per model with its messages, tokens and cost, and a total row.
    rows = page.locator("#models-table tbody tr:not([data-model='__total'])")
    expect(rows).to_have_count(len(usage["models_breakdown"]))
    for model, numbers in usage["models_breakdown"].items():
        row = page.locator(f'#models-table tr[data-model="{model}"]')
        expect(row.locator("td[data-col=messages]")).to_have_text(fmt_int(numbers["messages"]))
        expect(row.locator("td[data-col=input_tokens]")).to_have_text(fmt_int(numbers["input_tokens"]))
        expect(row.locator("td[data-col=output_tokens]")).to_have_text(fmt_int(numbers["output_tokens"]))
        expect(row.locator("td[data-col=tokens]")).to_have_text(fmt_int(numbers["tokens"]))
        expect(row.locator("td[data-col=cost]")).to_have_text(fmt_cost(numbers["cost"]))
    total = page.locator("#models-table tr[data-model='__total']")
    expect(total.locator("td[data-col=messages]")).to_have_text(fmt_int(usage["total_messages"]))
    expect(total.locator("td[data-col=tokens]")).to_have_text(fmt_int(usage["total_tokens"]))

    # The daily chart: one bar segment per day and model, each the API's number, for each metric.
    bars = page.locator("#daily-chart svg rect.bar")
    expect(bars).to_have_count(len(usage["daily"]))
    for metric in ("messages", "tokens", "cost"):
        page.locator(f"#metric-seg button[data-metric={metric}]").click()
        expect(page.locator(f"#daily-chart svg[data-metric={metric}]")).to_have_count(1)
        drawn = page.eval_on_selector_all(
            "#daily-chart svg rect.bar",
            "els => els.map(e => [e.dataset.date, e.dataset.model, Number(e.dataset.value), Number(e.getAttribute('height'))])")
        assert sorted((d, m) for d, m, _, _ in drawn) == sorted((d["date"], d["model"]) for d in usage["daily"])
        by_key = {(d, m): (v, h) for d, m, v, h in drawn}
        for day in usage["daily"]:
            value, height = by_key[(day["date"], day["model"])]
            assert value == pytest.approx(day[metric]), (metric, day)
            assert (height > 0) == (day[metric] > 0), (metric, day, height)
    page.locator("#metric-seg button[data-metric=messages]").click()

    # Recent requests: the API's page, in its order, with model, status, tokens and cost; the
    # ones made with the API key name it.
    shown = page.locator("#requests-rows tr[data-request-id]")
    expect(shown).to_have_count(len(requests))
    assert shown.evaluate_all("rows => rows.map(r => r.dataset.requestId)") == [r["id"] for r in requests]
    for r in requests:
        row = page.locator(f'#requests-rows tr[data-request-id="{r["id"]}"]')
        expect(row.locator("td[data-col=id]")).to_have_text(r["id"])
        expect(row.locator("td[data-col=model]")).to_contain_text(r["model"])
        expect(row.locator("td[data-col=tokens] .cell-main")).to_have_text(fmt_int(r["total_tokens"]))
        expect(row.locator("td[data-col=tokens] .cell-sub")).to_have_text(
            f"{fmt_int(r['input_tokens'])} in · {fmt_int(r['output_tokens'])} out")
        expect(row.locator("td[data-col=cost]")).to_have_text(fmt_cost(r["cost"]))
        expect(row.locator("td[data-col=status] .badge")).to_have_text(r["status"].capitalize())
        if r["api_key_id"] == key["id"]:
            expect(row.locator("td[data-col=source]")).to_have_text("ci-key")
        elif r["api_key_id"] is None:
            expect(row.locator("td[data-col=source]")).to_have_text("Signed-in user")
        if r["status"] == "success":
            assert r["cost"] > 0 and fmt_cost(r["cost"]) != "$0.00", r

    tab.assert_fits_width()
    tab.shoot(screenshots, "dashboard-laptop.png")

    # The same page at a phone's width: nothing sticks out sideways, the chart is redrawn whole.
    page.set_viewport_size(PHONE)
    expect(page.locator("#org-select")).to_be_visible()
    page.wait_for_function("document.querySelector('#daily-chart svg').getAttribute('width') < 390")
    expect(bars).to_have_count(len(usage["daily"]))
    tab.assert_fits_width()
    tab.shoot(screenshots, "dashboard-phone.png")
    page.set_viewport_size(LAPTOP)

    # API keys: the one the test made is listed by name and prefix, never its secret.
    keys = page.locator("#keys-table tbody tr")
    expect(keys).to_have_count(1)
    expect(keys.first.locator("td[data-col=name]")).to_have_text("ci-key")
    expect(keys.first.locator("td[data-col=prefix]")).to_have_text(key["prefix"])
    assert key["key"] not in page.content()

    # A key created in the page: its secret is shown once, and it works.
    page.get_by_label("New key name").fill("Dashboard key")
    page.get_by_role("button", name="Create key", exact=True).click()
    secret_box = page.locator("#new-key-secret")
    expect(secret_box).to_be_visible()
    secret = secret_box.input_value()
    assert secret.startswith("sk-gw-"), secret
    status, models = gateway.call("GET", "/v1/models", token=secret)
    assert status == 200, models
    assert {m["id"] for m in models["data"]} >= {"gpt-4o-mini", "gemini-1.5-flash"}, models
    expect(keys).to_have_count(2)
    new_row = page.locator("#keys-table tbody tr", has_text="Dashboard key")
    new_key_id = new_row.get_attribute("data-key-id")
    assert secret.startswith(new_row.locator("td[data-col=prefix]").inner_text().rstrip("…")), "the list shows the key's start"

    page.get_by_role("button", name="Done", exact=True).click()
    expect(secret_box).to_have_count(0)
    assert secret not in page.content()
    page.reload()
    expect(page.locator("#dash-title")).to_have_text("Acme Robotics")  # the session and org survive a reload
    expect(keys).to_have_count(2)
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content()

    # Revoking it in the page: gone from the list, and refused at once; the other key still works.
    page.locator(f'#keys-table tr[data-key-id="{new_key_id}"]').get_by_role("button", name="Revoke").click()
    page.get_by_role("button", name="Revoke key", exact=True).click()
    expect(page.locator(f'#keys-table tr[data-key-id="{new_key_id}"]')).to_have_count(0)
    expect(keys).to_have_count(1)
    expect(page.locator("#banner")).to_contain_text("was revoked")
    status, body = gateway.call("GET", "/v1/models", token=secret)
    assert status == 401, body
    status, body = gateway.call("GET", "/v1/models", token=key["key"])
    assert status == 200, body

    # Signing out forgets the token and goes back to the sign-in form.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('gateway.token')") is None
    tab.close()


def test_an_empty_org_and_another_month_show_empty_states(gateway, seeded, browser, screenshots):
    usage, empty_usage, org, empty = seeded["usage"], seeded["empty_usage"], seeded["org"], seeded["empty"]
    tab = Tab(browser, gateway.base, viewport=PHONE)
    page = tab.page
    tab.open()
    tab.sign_in()
    page.locator(f'.org-item[data-org-id="{empty["id"]}"]').click()
    expect(page.locator("#dash-title")).to_have_text("Side Project")

    # THEN a new org on the free plan: zero of its limits, and empty states that say what comes.
    expect(page.get_by_test_id("plan-badge")).to_have_text(f"{empty_usage['plan'].capitalize()} plan")
    expect(page.get_by_test_id("stat-messages-used")).to_have_text("0")
    expect(page.get_by_test_id("stat-messages-limit")).to_have_text(fmt_int(empty_usage["messages_limit"]))
    expect(page.get_by_test_id("stat-tokens-limit")).to_have_text(fmt_int(empty_usage["tokens_limit"]))
    expect(page.get_by_test_id("stat-cost-value")).to_have_text("$0.00")
    expect(page.locator("#daily-body")).to_have_attribute("data-state", "empty")
    expect(page.locator("#daily-body")).to_contain_text("No usage in")
    expect(page.locator("#daily-chart")).to_have_count(0)
    expect(page.locator("#models-body")).to_contain_text("No models used yet")
    expect(page.locator("#requests-body")).to_contain_text("No requests yet")
    expect(page.locator("#keys-body")).to_contain_text("No API keys yet")
    tab.assert_fits_width()
    tab.shoot(screenshots, "empty-org-phone.png")

    # WHEN switching to the busy org in the header, and then to the month before.
    page.locator("#org-select").select_option(org["id"])
    expect(page.locator("#dash-title")).to_have_text("Acme Robotics")
    expect(page.get_by_test_id("stat-messages-used")).to_have_text(fmt_int(usage["total_messages"]))
    previous = shift_month(usage["month"], -1)
    status, before = gateway.call("GET", f"/api/v1/ai/usage?month={previous}", token=seeded["token"], org=org["id"])
    assert status == 200 and before["month"] == previous, before
    page.get_by_role("button", name="Previous month").click()
    expect(page).to_have_url(re.compile(rf"[?&]month={previous}\b"))
    expect(page.locator("#month-input")).to_have_value(previous)
    expect(page.get_by_test_id("stat-messages-used")).to_have_text(fmt_int(before["total_messages"]))
    expect(page.locator("#daily-body")).to_have_attribute("data-state", "empty")
    expect(page.locator("#requests-body")).to_contain_text("No requests yet")
    expect(page.get_by_role("button", name="Next month")).to_be_enabled()

    # THEN the browser's Back returns to this month; its Next button is off (no future months).
    page.go_back()
    expect(page.locator("#month-input")).to_have_value(usage["month"])
    expect(page.get_by_test_id("stat-messages-used")).to_have_text(fmt_int(usage["total_messages"]))
    expect(page.get_by_role("button", name="Next month")).to_be_disabled()

    # A month in the address is honoured when the page opens.
    tab.open(f"/?month={previous}")
    expect(page.locator("#month-input")).to_have_value(previous)
    expect(page.locator("#daily-body")).to_have_attribute("data-state", "empty")
    tab.assert_fits_width()
    tab.close()


def test_an_expired_session_goes_back_to_sign_in(gateway, seeded, browser):
    tab = Tab(browser, gateway.base)
    page = tab.page
    tab.open()
    tab.sign_in()
    page.locator(f'.org-item[data-org-id="{seeded["org"]["id"]}"]').click()
    expect(page.locator("#dash-title")).to_have_text("Acme Robotics")
    # WHEN the token stops being accepted (here: replaced by a forged one) and the page calls the API.
    page.evaluate("sessionStorage.setItem('gateway.token', 'x.eyJlbWFpbCI6ImFAYi5jIn0.y')")
    page.reload()
    # THEN the 401 sends the user back to sign in, saying why, with the token forgotten.
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("Please sign in again")
    assert page.evaluate("sessionStorage.getItem('gateway.token')") is None
    assert tab.errors and all("401" in e for e in tab.errors), tab.errors
    tab.errors.clear()
    tab.close()


def test_a_new_user_registers_and_creates_organizations_in_the_page(gateway, browser):
    tab = Tab(browser, gateway.base, viewport=PHONE)
    page = tab.page
    tab.open()
    # GIVEN the sign-in form; WHEN a visitor opens "Create an account" and registers.
    page.get_by_role("button", name="Create an account").click()
    form = page.locator("#register-form")
    form.get_by_label("Email").fill("newcomer@example.com")
    form.get_by_label("Password").fill("short")
    form.get_by_role("button", name="Create account").click()
    expect(page.locator("#register-error")).to_have_text("The password must be 8 to 128 characters.")
    form.get_by_label("Password").fill("a long enough password")
    form.get_by_role("button", name="Create account").click()

    # THEN, with no org yet, the page offers to create one; the slug follows the name.
    expect(page.get_by_role("heading", name="Create your first organization")).to_be_visible()
    page.get_by_label("Name", exact=True).first.fill("Newco Labs")
    expect(page.locator("#org-slug")).to_have_value("newco-labs")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#dash-title")).to_have_text("Newco Labs")
    expect(page.get_by_test_id("stat-messages-used")).to_have_text("0")
    expect(page.locator("#user-email")).to_have_text("newcomer@example.com")

    # A second org from the header's organization menu, in a dialog; a taken slug is explained.
    page.locator("#org-select").select_option("__new")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill("Other")
    dialog.get_by_label("Slug").fill("newco-labs")
    dialog.get_by_role("button", name="Create organization").click()
    expect(page.locator("#dlg-org-error")).to_contain_text("newco-labs")
    dialog.get_by_label("Slug").fill("newco-other")
    dialog.get_by_role("button", name="Create organization").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#dash-title")).to_have_text("Other")
    expect(page.locator("#org-select option")).to_have_text(["Newco Labs", "Other", "+ New organization…"])
    tab.assert_fits_width()
    # The taken slug's 409 was logged by the browser; nothing else may have been.
    assert all("409" in e for e in tab.errors), tab.errors
    tab.errors.clear()
    tab.close()
