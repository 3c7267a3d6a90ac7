"""/dashboard in a real headless Chromium against a real server (issue 13).

Debian's ``chromium`` driven by Playwright's Python client (``executable_path``; no
browser is downloaded). ``scripts/test`` installs chromium through
``scripts/chromium`` when it is missing; without it these tests skip with that
reason, except under CI, where they fail.

Every page here records console messages and page errors, and each test ends by
asserting there were none (besides the network errors a test provokes on purpose).
Screenshots of the seeded dashboard go to ``var/test-screenshots/`` (ignored by
git; not the pytest tmp dir, which parallel runs on a shared machine prune), and
their paths are printed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests import pg
from tests.server.serverproc import ADMIN_TOKEN, MAINTAINER_TOKEN, ServerProcess, bearer

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
expect = playwright_api.expect

CHROMIUM = os.environ.get("ICN_MCP_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "var" / "test-screenshots"
#: The page polls every 2 s; a change must show within a few polls. This is an
#: upper bound to wait for, not a timing assertion.
UPDATE_WAIT_MS = 20_000
#: Anything the tests seed that a page without a token must never show.
SECRETS = ("planner-ann", "reviewer-bob", "design the schema", "build the store", "ship it", "lonely task")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: run scripts/chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # A loaded machine (2 cores, many tests) can be slow to draw: wait longer than
    # Playwright's 5 s default before calling anything missing.
    expect.set_options(timeout=UPDATE_WAIT_MS)
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page with everything it said and fetched."""

    page: Any
    console: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)

    def problems(self, allowed: Callable[[str], bool] = lambda text: False) -> list[str]:
        return [text for text in self.console if not allowed(text)]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Watched]]:
    contexts: list[Any] = []

    def _open(url: str, *, width: int = 1280, height: int = 800) -> Watched:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        page.on(
            "console",
            lambda m: watched.console.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: watched.console.append(f"pageerror: {e}"))
        page.on("request", lambda r: watched.requests.append(r))
        page.on("response", lambda r: watched.responses.append(r))
        page.goto(url)
        return watched

    yield _open
    for context in contexts:
        context.close()


def _post(client: httpx.Client, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Seeded:
    server: ServerProcess
    tokens: dict[str, str]
    ids: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url


def _seed(server: ServerProcess) -> Seeded:
    """Two agents; design (completed) <- build (claimed by ann) <- ship (open); lone (open)."""
    with server.client() as client:
        ann = _post(client, "/api/agent/register", ADMIN_TOKEN, {"name": "planner-ann", "kind": "planner"})
        bob = _post(client, "/api/agent/register", ADMIN_TOKEN, {"name": "reviewer-bob", "kind": "reviewer"})
        design = _post(client, "/api/task/create", ann["token"], {"title": "design the schema", "priority": 9})["id"]
        build = _post(
            client,
            "/api/task/create",
            ann["token"],
            {"title": "build the store", "depends_on": [design], "priority": 5},
        )["id"]
        ship = _post(client, "/api/task/create", ann["token"], {"title": "ship it", "depends_on": [build]})["id"]
        lone = _post(client, "/api/task/create", ann["token"], {"title": "lonely task", "priority": -5})["id"]
        assert str(_post(client, "/api/task/claim", ann["token"], {})["task_id"]) == str(design)
        _post(client, "/api/task/run", ann["token"], {"task_id": design, "status": "completed", "notes": "done"})
        assert str(_post(client, "/api/task/claim", ann["token"], {"lease_s": 3600})["task_id"]) == str(build)
    ids = {"design": str(design), "build": str(build), "ship": str(ship), "lone": str(lone)}
    return Seeded(server, {"ann": ann["token"], "bob": bob["token"]}, ids)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A seeded server that the tests of this module only read."""
    server = ServerProcess(tmp_path_factory.mktemp("dashboard-browser") / "var").start()
    try:
        yield _seed(server)
    finally:
        server.kill()


def _with_token(url: str) -> str:
    return f"{url}/dashboard#token={MAINTAINER_TOKEN}"


def _row(page: Any, title: str) -> Any:
    return page.locator("#task-rows tr", has=page.get_by_role("button", name=re.compile(re.escape(title))))


def _wait_for_refreshes(page: Any, count: int) -> None:
    """Until the page has drawn ``count`` more refreshes (its own counter)."""

    # Polled from here: wait_for_function evaluates a string, which the page's CSP
    # (no 'unsafe-eval') rightly refuses.
    def refreshes() -> int:
        return int(page.evaluate("document.body.dataset.refreshes || 0"))

    target = refreshes() + count
    for _ in range(UPDATE_WAIT_MS // 100):
        if refreshes() >= target:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"the page did not refresh {count} times")


def _screenshot(page: Any, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\ndashboard screenshot: {path}")


# -- with and without a token ----------------------------------------------------------


def test_with_a_token_the_page_shows_tasks_states_graph_and_agents(
    seeded: Seeded, open_page: Callable[..., Watched], capsys: pytest.CaptureFixture[str]
) -> None:
    watched = open_page(_with_token(seeded.url))
    page = watched.page
    ids = seeded.ids
    expect(_row(page, "build the store")).to_contain_text("claimed")

    # The token left the address bar at once and lives in sessionStorage only.
    assert "token" not in page.url and "#" not in page.url
    assert page.evaluate("sessionStorage.getItem('icn-mcp.maintainer-token')") == MAINTAINER_TOKEN
    for request in watched.requests:
        assert MAINTAINER_TOKEN not in request.url
    admin = [r for r in watched.requests if "/api/admin/" in r.url]
    assert admin and all(r.headers.get("authorization") == f"Bearer {MAINTAINER_TOKEN}" for r in admin)

    # Tasks with their states, claimer and attempt.
    expect(_row(page, "design the schema")).to_contain_text("completed")
    build = _row(page, "build the store")
    expect(build).to_contain_text("planner-ann")
    expect(build.locator("td").nth(5)).to_have_text("1 / 3")
    expect(build.locator("td").nth(6)).to_have_text(re.compile(r"^(59m|1h 0m)"))  # an hour's lease
    expect(_row(page, "ship it")).to_contain_text("open")
    expect(_row(page, "lonely task")).to_contain_text("open")
    counts = page.locator("#count-list")
    expect(counts).to_contain_text("4all")
    for label, n in (("open", 2), ("claimed", 1), ("completed", 1), ("failed", 0)):
        expect(counts.get_by_role("button", name=f"{label}: {n} tasks")).to_be_visible()

    # The graph of all open work: build, ship, lone and design (build waits for it).
    nodes = page.locator("#graph-box svg g.node")
    expect(nodes).to_have_count(4)
    expect(page.locator("#graph-box svg path.edge")).to_have_count(2)
    node = page.locator(f'#graph-box g.node[data-task-id="{ids["build"]}"]')
    expect(node).to_have_class(re.compile(r"\bst-claimed\b"))
    expect(page.locator(f'#graph-box g.node[data-task-id="{ids["design"]}"]')).to_have_class(
        re.compile(r"\bst-completed\b")
    )
    # Read in one evaluation: the page redraws the graph while the test runs.
    drawn = page.evaluate(
        """ids => Object.fromEntries(Object.entries(ids).map(([name, id]) => {
            const node = document.querySelector(`#graph-box g.node[data-task-id="${id}"]`);
            return [name, {fill: getComputedStyle(node.querySelector("rect")).fill,
                           top: node.getBoundingClientRect().top}];
        }))""",
        {name: ids[name] for name in ("design", "build", "ship")},
    )
    fills = {name: d["fill"] for name, d in drawn.items()}
    assert len(set(fills.values())) == 3, fills  # completed, claimed, open: three colours
    # Layered: a dependency is drawn above what waits for it.
    tops = {name: d["top"] for name, d in drawn.items()}
    assert tops["design"] < tops["build"] < tops["ship"], tops

    # Agents: name, kind, tokens active, last activity, tasks held.
    ann = page.locator("#agent-rows tr", has_text="planner-ann")
    expect(ann).to_contain_text("planner")
    expect(ann.locator("td").nth(2)).to_have_text("1")
    expect(ann.locator("td").nth(3)).to_have_text(re.compile(r"ago$"))
    expect(ann.locator("td").nth(4)).to_have_text(f"#{ids['build']}")
    expect(page.locator("#agent-rows tr", has_text="reviewer-bob").locator("td").nth(3)).to_have_text("never")

    # Database health.
    facts = page.locator("#db-facts")
    for text in ("Size", "WAL", "Migrations", "applied", "Last backup", "none yet", "Replication", "Busy retries"):
        expect(facts).to_contain_text(text)

    _screenshot(page, "dashboard-1280x800.png", capsys)

    # Choosing a task shows its neighbourhood and its runs.
    _row(page, "design the schema").get_by_role("button").click()
    expect(page.locator("#graph-caption")).to_contain_text(f"Task {ids['design']} and the tasks")
    expect(page.locator("#runs")).to_contain_text(f"Runs of task {ids['design']}")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#runs tbody")).to_contain_text("done")
    expect(nodes).to_have_count(3)  # design, build, ship (two steps); lone is unrelated
    expect(page.locator(f'#graph-box g.node[data-task-id="{ids["design"]}"]')).to_have_class(re.compile(r"\bfocus\b"))
    assert watched.problems() == []
    # The token's URL was replaced in the history, not followed by a clean one.
    page.go_back()
    assert "token" not in page.url


def test_without_a_token_only_the_form_and_public_health(seeded: Seeded, open_page: Callable[..., Watched]) -> None:
    watched = open_page(f"{seeded.url}/dashboard")
    page = watched.page
    expect(page.locator("#public-health")).to_contain_text("answering")
    expect(page.get_by_label("Maintainer token")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()
    # Let it poll a few times: it must keep to the public routes.
    for _ in range(2):
        with page.expect_response(lambda r: r.url.endswith("/healthz"), timeout=UPDATE_WAIT_MS):
            pass
    text = page.locator("body").inner_text()
    for secret in SECRETS:
        assert secret not in text
    paths = {httpx.URL(r.url).path for r in watched.responses}
    assert paths <= {"/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/healthz", "/healthz/db"}, (
        paths
    )
    for response in watched.responses:
        body = response.text()
        for secret in SECRETS:
            assert secret not in body, (response.url, secret)
    assert page.locator("#task-rows tr, #agent-rows tr, #graph-box g.node").count() == 0
    assert watched.problems() == []


def test_an_agent_token_is_refused_and_nothing_is_shown(seeded: Seeded, open_page: Callable[..., Watched]) -> None:
    watched = open_page(f"{seeded.url}/dashboard")
    page = watched.page
    page.get_by_label("Maintainer token").fill(seeded.tokens["bob"])
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.locator("#login-error")).to_contain_text("403")
    expect(page.locator("#board")).to_be_hidden()
    expect(page.get_by_label("Maintainer token")).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('icn-mcp.maintainer-token')") is None
    for secret in SECRETS:
        assert secret not in page.locator("body").inner_text()
    # The only console errors: Chromium's own line for each refused request.
    assert watched.problems(lambda text: "status of 403" in text) == []


# -- live updates ------------------------------------------------------------------------


def test_live_updates_show_a_claim_then_stale_then_live_again(
    server_factory: type[ServerProcess], tmp_path: Path, open_page: Callable[..., Watched]
) -> None:
    """One server for both (a server start is the slow part): a task claimed through
    the API shows as claimed without a reload; a stopped server shows "stale"."""
    server = server_factory(tmp_path / "var").start()
    seeded = _seed(server)
    watched = open_page(_with_token(server.url))
    page = watched.page
    expect(page.locator("#stale")).to_be_hidden()
    with server.client() as client:
        urgent = _post(client, "/api/task/create", seeded.tokens["bob"], {"title": "urgent fix", "priority": 1000})[
            "id"
        ]
    row = _row(page, "urgent fix")
    expect(row).to_contain_text("open", timeout=UPDATE_WAIT_MS)
    with server.client() as client:
        claim = _post(client, "/api/task/claim", seeded.tokens["bob"], {})
    assert str(claim["task_id"]) == str(urgent)
    expect(row.locator("td").nth(2)).to_have_text("claimed", timeout=UPDATE_WAIT_MS)
    expect(row).to_contain_text("reviewer-bob")
    expect(page.locator(f'#graph-box g.node[data-task-id="{urgent}"]')).to_have_class(re.compile(r"\bst-claimed\b"))
    expect(page.locator("#agent-rows tr", has_text="reviewer-bob").locator("td").nth(4)).to_have_text(f"#{urgent}")
    assert watched.problems() == []

    port = httpx.URL(server.url).port
    server.kill()
    expect(page.locator("#stale")).to_be_visible(timeout=UPDATE_WAIT_MS)
    expect(page.locator("#stale")).to_contain_text("Stale: the server has not answered since")
    expect(page.locator("#live")).to_contain_text("Stale")
    expect(page.locator("body")).to_have_class(re.compile(r"\bstale\b"))
    # The last data stays on screen, marked stale.
    expect(row).to_contain_text("claimed")

    again = server_factory(tmp_path / "var", MCP_PORT=str(port)).start()
    assert again.url == server.url
    expect(page.locator("#stale")).to_be_hidden(timeout=UPDATE_WAIT_MS)
    expect(page.locator("#live")).to_contain_text("Live")
    # Only the refused connections while the server was down.
    assert watched.problems(lambda text: "net::ERR_CONNECTION_REFUSED" in text) == []


def test_the_task_table_pages_and_filters(server: ServerProcess, open_page: Callable[..., Watched]) -> None:
    seeded = _seed(server)  # 4 tasks
    with server.client() as client:
        for n in range(14):
            _post(client, "/api/task/create", seeded.tokens["bob"], {"title": f"bulk task {n:02d}"})
    watched = open_page(_with_token(server.url))
    page = watched.page
    rows = page.locator("#task-rows tr")
    expect(rows).to_have_count(15)  # a page holds 15, oldest first
    expect(page.locator("#page-label")).to_have_text("Page 1")
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("bulk task 11")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(rows).to_have_count(15)
    expect(rows.first).to_contain_text("design the schema")
    # The counts filter the table too: 16 open tasks make two pages of open ones.
    page.locator("#count-list").get_by_role("button", name=re.compile(r"^open: 16 tasks")).click()
    expect(page.locator("#status-filter")).to_have_value("open")
    expect(rows).to_have_count(15)
    expect(page.locator("#task-rows")).not_to_contain_text("claimed")
    page.get_by_role("button", name="Next").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#page-label")).to_have_text("Page 2 of open tasks")
    assert watched.problems() == []


# -- ids as the server sends them --------------------------------------------------------


_ID_KEYS = {"id", "task_id", "from", "to", "focus", "depends_on", "tasks_held"}


def _convert_ids(value: Any, to: type, key: str | None = None) -> Any:
    """Task and run ids (decimal strings or integers) as ``to``; agent ids (UUIDs) stay."""
    if isinstance(value, dict):
        return {k: _convert_ids(v, to, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert_ids(v, to, key) for v in value]
    if key in _ID_KEYS and isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).isdigit():
        return to(value)
    return value


@pytest.mark.parametrize("id_type", [int, str], ids=["integer-ids", "string-ids"])
def test_ids_work_as_json_integers_and_as_decimal_strings(seeded: Seeded, browser: Any, id_type: type) -> None:
    """The compat change sends ids as "42" instead of 42: the page handles both."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:

        def rewrite(route: Any) -> None:
            response = route.fetch()
            try:
                body = json.loads(response.text())
            except ValueError:
                route.fulfill(response=response)
                return
            route.fulfill(response=response, body=json.dumps(_convert_ids(body, id_type)))

        context.route(re.compile(r"/api/"), rewrite)
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(_with_token(seeded.url))
        ids = seeded.ids
        expect(_row(page, "build the store")).to_contain_text("planner-ann")
        expect(page.locator("#graph-box svg g.node")).to_have_count(4)
        expect(page.locator("#agent-rows tr", has_text="planner-ann").locator("td").nth(4)).to_have_text(
            f"#{ids['build']}"
        )
        page.locator("#agent-rows").get_by_role("button", name=f"Show task {ids['build']}").click()
        expect(page.locator("#graph-caption")).to_contain_text(f"Task {ids['build']} and the tasks")
        expect(page.locator(f'#graph-box g.node.focus[data-task-id="{ids["build"]}"]')).to_have_count(1)
        expect(_row(page, "build the store")).to_have_class(re.compile(r"\bselected\b"))
        assert problems == []
    finally:
        context.close()


# -- readable and usable -----------------------------------------------------------------


def test_phone_width_has_no_sideways_page_and_readable_text(
    seeded: Seeded, open_page: Callable[..., Watched], capsys: pytest.CaptureFixture[str]
) -> None:
    watched = open_page(_with_token(seeded.url), width=390, height=844)
    page = watched.page
    expect(_row(page, "build the store")).to_contain_text("claimed")
    expect(page.locator("#graph-box svg g.node")).to_have_count(4)
    # The page itself never scrolls sideways (wide tables scroll inside their box).
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for section in ("#counts", "#tasks", "#graph", "#agents", "#database"):
        box = page.locator(section).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (section, box)
    sizes = page.locator("td, dd, dt, h2, button").evaluate_all(
        "els => els.map(e => parseFloat(getComputedStyle(e).fontSize))"
    )
    assert min(sizes) >= 12, sizes
    # One column: the sections stack.
    tops = [page.locator(s).bounding_box()["y"] for s in ("#tasks", "#graph", "#agents", "#database")]
    assert tops == sorted(tops) and len(set(tops)) == 4
    _screenshot(page, "dashboard-390x844.png", capsys)
    assert watched.problems() == []


def test_keyboard_alone_signs_in_filters_and_selects(seeded: Seeded, open_page: Callable[..., Watched]) -> None:
    watched = open_page(f"{seeded.url}/dashboard")
    page = watched.page
    keyboard = page.keyboard
    expect(page.locator("#public-health")).to_contain_text("answering")

    def focused() -> dict[str, Any]:
        return page.evaluate(
            "() => { const e = document.activeElement; return {id: e.id, tag: e.tagName.toLowerCase(),"
            " text: (e.textContent || '').trim(), task: e.getAttribute('data-task-id'),"
            " label: e.getAttribute('aria-label') || ''}; }"
        )

    keyboard.press("Tab")
    assert focused()["text"] == "Skip to content"
    keyboard.press("Tab")
    assert focused()["id"] == "token-input"
    keyboard.type(MAINTAINER_TOKEN)
    keyboard.press("Enter")
    expect(page.locator("#board")).to_be_visible()
    expect(page.locator("#tasks-title")).to_be_focused()

    # Status filter by keyboard: the table shows only claimed tasks.
    keyboard.press("Tab")
    assert focused()["id"] == "status-filter"
    page.locator("#status-filter").press("ArrowDown")  # all -> open
    page.locator("#status-filter").press("ArrowDown")  # open -> claimed
    expect(page.locator("#status-filter")).to_have_value("claimed")
    expect(page.locator("#task-rows tr")).to_have_count(1)
    expect(page.locator("#page-label")).to_contain_text("claimed")

    # On through the table to the task's title; Enter selects it and moves focus
    # to its node in the graph.
    keyboard.press("Tab")  # the scrollable table region
    keyboard.press("Tab")
    title_label = f"Show dependencies and runs of task {seeded.ids['build']}"
    assert focused()["label"].startswith(title_label)
    # The table is redrawn on every refresh (ages and leases tick): the focus stays.
    _wait_for_refreshes(page, 2)
    assert focused()["label"].startswith(title_label)
    keyboard.press("Enter")
    expect(page.locator("#graph-caption")).to_contain_text(f"Task {seeded.ids['build']} and the tasks")
    expect(page.locator(f'#graph-box g.node[data-task-id="{seeded.ids["build"]}"]')).to_be_focused()
    # Tab to another node; it keeps the focus through refreshes.
    keyboard.press("Tab")
    other = focused()["task"]
    assert other is not None and other != seeded.ids["build"]
    _wait_for_refreshes(page, 2)
    assert focused()["task"] == other
    # Enter selects it; Escape goes back to all open work.
    keyboard.press("Enter")
    expect(page.locator("#graph-caption")).to_contain_text(f"Task {other} and the tasks")
    keyboard.press("Escape")
    expect(page.locator("#graph-caption")).to_contain_text("All open work")
    assert watched.problems() == []


@pytest.mark.postgres
def test_the_page_works_on_postgresql(
    pg_url: str, server_factory: type[ServerProcess], tmp_path: Path, open_page: Callable[..., Watched]
) -> None:
    """The same page on a server whose database is PostgreSQL: tasks, graph, agents,
    and the database facts PostgreSQL has (its version instead of SQLite's WAL)."""
    seeded = _seed(server_factory(tmp_path / "var", MCP_DB_URL=pg_url).start())
    watched = open_page(_with_token(seeded.url))
    page = watched.page
    expect(_row(page, "build the store")).to_contain_text("claimed")
    expect(_row(page, "design the schema")).to_contain_text("completed")
    expect(page.locator("#graph-box svg g.node")).to_have_count(4)
    expect(page.locator("#graph-box svg path.edge")).to_have_count(2)
    expect(page.locator("#agent-rows tr", has_text="planner-ann").locator("td").nth(4)).to_have_text(
        f"#{seeded.ids['build']}"
    )
    facts = page.locator("#db-facts")
    for text in ("Size", "Server", "PostgreSQL 15", "Migrations", pg.latest_migration(), "Last backup"):
        expect(facts).to_contain_text(text)
    expect(facts).not_to_contain_text("undefined")
    assert watched.problems() == []
