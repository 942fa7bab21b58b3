"""The accounts UI in a real browser: Debian's Chromium driven by Playwright, against the
web service run as a process (SQLite, folder storage, the embedded all-in-one).

- The default (loopback, no ACCOUNTS) opens straight into the app: no login form.
- ACCOUNTS=required: the login form, a wrong password, the account menu, an API token
  shown once, an invitation redeemed in another browser context by a member (who sees
  no Users panel), disabling that member, and logging out.

Every test fails on any console error or page error, except the 401s the page is meant
to meet (``ALLOWED_401``). Chromium comes from scripts/install-servers, never from
``playwright install``. Waits are Playwright's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import in_ci
from tests.e2e.harness import ROOT, Services, make_csv
from tests.servers import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ADMIN, MEMBER = "admin@example.com", "member@example.com"
PASSWORD, MEMBER_PASSWORD = "correct horse battery staple", "member password 1234"
SECRET = "s" * 40
#: Settings of the test's own environment the web must not inherit.
INHERITED_NOT = (
    "BROKER_", "DATABASE_", "STORAGE_", "ACCOUNTS", "SESSION_SECRET", "ALLOW_SIGNUP", "HOST",
    "TRUSTED_PROXIES",
)  # fmt: skip
#: The 401s a page meets on purpose: "nobody is logged in" and a wrong password; Chromium
#: logs each failed fetch as a console error.
ALLOWED_401 = {"/api/auth/me", "/api/auth/login"}
UNAUTHORIZED = "Failed to load resource: the server responded with a status of 401"


class Console:
    """Collects the console errors and page errors of every page it watches."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.any_401: set[Page] = set()

    def watch(self, page: Page) -> Page:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        return page

    def allow_any_401(self, page: Page) -> None:
        """From now on ``page``'s session is meant to be over: any call may answer 401."""
        self.any_401.add(page)

    def _console(self, page: Page, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "")
        if msg.text.startswith(UNAUTHORIZED) and (
            page in self.any_401 or urlsplit(url).path in ALLOWED_401
        ):
            return
        self.errors.append(f"console error: {msg.text} ({url})")

    def check(self) -> None:
        assert self.errors == [], "\n".join(self.errors)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/install-servers"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """New browser contexts (separate cookie jars), closed after the test."""
    made: list[BrowserContext] = []

    def new() -> BrowserContext:
        context = browser.new_context()
        context.set_default_timeout(15_000)
        made.append(context)
        return context

    yield new
    for context in made:
        with contextlib.suppress(PlaywrightError):
            context.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Callable[..., Services]]:
    """Starts the web (embedded all-in-one) on SQLite and a folder; stopped at teardown."""
    started: list[Services] = []

    def start(before: Callable[[Services], None] | None = None, **settings: str) -> Services:
        env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_NOT)}
        env.update(
            PORT=str(free_port()),
            DATABASE_URL=f"sqlite:///{tmp_path}/conveyor.db",
            STORAGE_URL=str(tmp_path / "storage"),
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            **settings,
        )
        services = Services(tmp_path, env)
        if before is not None:
            before(services)
        started.append(services)
        services.start_web()
        return services

    yield start
    for services in started:
        services.stop_all()


def create_admin(services: Services) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.web", "users", "create", "--admin", ADMIN],
        input=PASSWORD + "\n", env=services.env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_loopback_default_opens_into_the_app_with_no_login(
    web: Callable[..., Services], contexts: Callable[[], BrowserContext], console: Console
) -> None:
    services = web()
    page = console.watch(contexts().new_page())
    page.goto(services.base + "/")

    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#worker-counts")).to_contain_text("online")  # the app polls
    expect(page.locator("#login-view")).to_be_hidden()
    expect(page.locator("#account")).to_be_hidden()
    expect(page.locator("#users-panel")).to_be_hidden()
    console.check()


def test_log_in_tokens_invite_a_member_and_log_out(
    web: Callable[..., Services],
    contexts: Callable[[], BrowserContext],
    console: Console,
    tmp_path: Path,
) -> None:
    services = web(create_admin, ACCOUNTS="required", SESSION_SECRET=SECRET)
    page = console.watch(contexts().new_page())
    page.goto(services.base + "/")

    # The login form, not the app; a wrong password is told inline.
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#login-email", ADMIN)
    page.fill("#login-password", "not the password at all")
    page.click("#login-submit")
    expect(page.locator("#login-msg")).to_have_text("Wrong email or password.")
    expect(page.locator("#app")).to_be_hidden()

    # The right one: the app, the account menu and (an admin) the Users panel.
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#login-view")).to_be_hidden()
    expect(page.locator("#account-email")).to_have_text(ADMIN)
    expect(page.locator("#users")).to_contain_text(ADMIN)

    # An existing call, now through the wrapper that sends the CSRF header.
    make_csv(tmp_path / "people.csv", 5)
    page.set_input_files("#file", str(tmp_path / "people.csv"))
    page.click("#submit")
    expect(page.locator("#upload-msg")).to_have_text(re.compile(r"^Job \S+ accepted\.$"))

    # An API token: shown once, listed by prefix, and it works as a Bearer token.
    page.click("#account summary")
    page.click("#menu-tokens")
    page.fill("#token-name", "backup script")
    page.click("#token-form button[type=submit]")
    shown = page.locator("#new-token-value")
    expect(shown).to_have_text(re.compile(r"^cvu_\S{20,}$"))
    token = shown.inner_text()
    expect(page.locator("#tokens")).to_contain_text("backup script")
    prefix = page.locator("#tokens code").first.inner_text().rstrip("…")
    assert token.startswith(prefix) and len(prefix) < len(token)
    me = httpx.get(
        f"{services.base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert me.status_code == 200 and me.json()["email"] == ADMIN, me.text
    page.click("#tokens-close")
    page.click("#account summary")
    page.click("#menu-tokens")
    expect(page.locator("#tokens")).to_contain_text("backup script")
    expect(page.locator("#new-token")).to_be_hidden()
    assert token not in page.content()

    # Invite a member; the link, opened in another browser, makes the account.
    page.fill("#invite-email", MEMBER)
    page.click("#invite-form button[type=submit]")
    link = page.locator("#invite-link")
    expect(link).to_have_text(re.compile(r"/invite#cvi_\S+$"))
    member = console.watch(contexts().new_page())
    member.goto(link.inner_text())
    expect(member.locator("#invite-view")).to_be_visible()
    member.fill("#invite-name", "Mem Ber")
    member.fill("#invite-password", MEMBER_PASSWORD)
    member.fill("#invite-password2", MEMBER_PASSWORD)
    member.click("#invite-submit")
    expect(member.locator("#app")).to_be_visible()
    expect(member.locator("#account-email")).to_have_text(MEMBER)
    expect(member.locator("#users-panel")).to_be_hidden()
    assert urlsplit(member.url).path == "/" and "cvi_" not in member.url

    # The admin disables the member: the member's next call returns to the login form.
    page.reload()
    row = page.locator("#users tr", has_text=MEMBER)
    expect(row).to_contain_text("active")
    console.allow_any_401(member)
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    member.evaluate("api('/api/auth/tokens').catch(() => null)")  # any call, through the wrapper
    expect(member.locator("#login-view")).to_be_visible()
    expect(member.locator("#login-msg")).to_have_text("Your session ended: log in again.")
    expect(member.locator("#app")).to_be_hidden()

    # Log out: back to the login form, and the session is gone.
    page.click("#account summary")
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.request.get(f"{services.base}/api/auth/me").status == 401
    console.check()
