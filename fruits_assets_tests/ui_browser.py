"""Drive the Dagster UI that `fruits ui` serves, in a real Chromium through Playwright.

Page-object style: each function is one thing a user does or looks at (open the lineage, click
"Materialize all…", pick partitions, launch, watch the backfill, open an asset, read its metadata)
and waits for the page to answer. The Dagster UI is a single-page app that polls its server, so
every step waits for what it expects to see, with generous timeouts: runs on 2 cores take minutes.
GraphQL (`/graphql`) only complements the clicks: it tells when a backfill has ended and what its
runs did, so that a failure says why.

Selectors are roles, visible text, `title` and `aria-label` attributes, and links' `href`; the
UI's CSS class names are build hashes and it ships no test ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # Playwright is a dev extra: import it only where a browser is driven
    from playwright.sync_api import Locator, Page

FRUITS = str(Path(sys.executable).with_name("fruits"))
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ENV = "FRUITS_CHROMIUM"

SECOND_MS = 1000
STEP_TIMEOUT_MS = 60 * SECOND_MS  # a page or a dialog answering on a loaded machine
SERVER_START_TIMEOUT_S = 300  # `fruits ui` up and its code location loaded
RUN_TIMEOUT_S = 15 * 60  # a backfill's runs: Spark start and featurizing on 2 cores
POLL_S = 10
VIEWPORT = {"width": 1600, "height": 1000}

ENDED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


# -- the browser ----------------------------------------------------------------------------------


def in_ci() -> bool:
    """CI sets CI=true; there a missing browser is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_chromium() -> str | None:
    """The Chromium to drive: $FRUITS_CHROMIUM, else `chromium` or `chromium-browser` on PATH."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """Chromium's path, once Playwright and Chromium are both there; otherwise skip the test with
    the reason (fail instead under CI, which must run the browser tests)."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "Playwright for Python is not installed (pip install -e '.[dev]')"
    chromium = find_chromium()
    if missing is None and chromium is None:
        where = os.environ.get(CHROMIUM_ENV) or " or ".join(CHROMIUM_NAMES) + " on PATH"
        missing = (
            f"no Chromium found ({where}); scripts/setup.sh installs Debian's chromium with apt, "
            f"or point {CHROMIUM_ENV} at a Chromium binary"
        )
    if missing is not None:
        if in_ci():
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    return chromium  # type: ignore[return-value]


@contextlib.contextmanager
def open_browser(chromium: str) -> Iterator[Page]:
    """A fresh headless Chromium page (no Playwright browser download: `executable_path`).

    Dagster's "Join the Dagster community" invitation, which a fresh browser profile gets a
    second after its first page, is marked as dismissed in the profile's storage beforehand, as
    its "Skip" does; should it show up all the same, "Skip" is clicked before the next action.
    Otherwise it can pop up between two steps and swallow a click.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(
                "try { localStorage.setItem('communityNux', JSON.stringify('1')) } catch (e) {}"
            )
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            invitation = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
            page.add_locator_handler(
                invitation, lambda: invitation.get_by_role("button", name="Skip").click()
            )
            yield page
        finally:
            browser.close()


class Screenshots:
    """Numbered PNGs of the steps (01-lineage.png, …) in one folder, listed in `files`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{len(self.files) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.files.append(path)
        return path


def settle(locator: Locator, timeout_ms: int = 5 * SECOND_MS) -> None:
    """Wait until `locator` and its ancestors are fully opaque: dialogs fade in, and a
    screenshot taken meanwhile shows them washed out."""
    locator.evaluate(
        """(el, timeout) => new Promise(done => {
            const start = performance.now();
            const opaque = () => {
                for (let e = el; e; e = e.parentElement)
                    if (parseFloat(getComputedStyle(e).opacity) < 1) return false;
                return true;
            };
            const tick = () => (opaque() || performance.now() - start > timeout)
                ? done() : requestAnimationFrame(tick);
            tick();
        })""",
        timeout_ms,
    )


# -- the `fruits ui` process -------------------------------------------------------------------


@dataclass
class UiProcess:
    """A running `fruits ui`: its process (leader of its own process group), port and log."""

    popen: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_ui(
    images: Path,
    output: Path,
    dagster_home: Path,
    log_path: Path,
    weights: Path | str | None = None,
    port: int | None = None,
    as_background_job: bool = True,
) -> UiProcess:
    """Start `fruits ui --images … --output … [--weights …] --port …` like a user does.

    It runs in its own session (process group), so that whatever it starts can be found and
    ended. With `as_background_job` it starts the way a script's `fruits ui … &` does: a shell
    without job control starts background commands with SIGINT ignored, and `fruits ui` must
    still stop on SIGTERM then.
    """
    port = port or free_port()
    command = [FRUITS, "ui", "--images", str(images), "--output", str(output), "--port", str(port)]
    if weights is not None:
        command += ["--weights", str(weights)]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_ignore_sigint if as_background_job else None,
        )
    return UiProcess(popen=popen, port=port, log_path=log_path)


def graphql(base_url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    """The `data` of one GraphQL query to the UI's server."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def wait_for_server(ui: UiProcess, timeout_s: float = SERVER_START_TIMEOUT_S) -> list[str]:
    """Wait until the UI answers and has loaded the asset graph; the asset keys it serves."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if ui.popen.poll() is not None:
            raise RuntimeError(
                f"`fruits ui` exited with {ui.popen.returncode} before serving:\n{ui.log_tail()}"
            )
        try:
            nodes = graphql(ui.base_url, "{ assetNodes { assetKey { path } } }", timeout=10)
            keys = ["/".join(n["assetKey"]["path"]) for n in nodes["assetNodes"]]
            if keys:
                return keys
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            last_error = exc
        time.sleep(2)
    raise TimeoutError(
        f"the UI did not serve the asset graph within {timeout_s:.0f} s "
        f"(last error: {last_error}):\n{ui.log_tail()}"
    )


@dataclass
class StopOutcome:
    """What happened when `fruits ui` was asked to stop with SIGTERM."""

    pid: int
    stopped: bool = False  # the `fruits ui` process exited within the wait
    returncode: int | None = None
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)  # "pid cmdline" still in its group then
    killed: list[str] = field(default_factory=list)  # what had to be SIGKILLed at the end

    def describe(self) -> str:
        lines = [
            f"SIGTERM to `fruits ui` (pid {self.pid}): "
            + (
                f"exited with {self.returncode} after {self.seconds:.1f} s"
                if self.stopped
                else f"still running after {self.seconds:.1f} s"
            )
        ]
        lines += [f"  left running: {p}" for p in self.leftovers]
        lines += [f"  SIGKILLed at the end: {p}" for p in self.killed]
        return "\n".join(lines)


def processes_in_group(pgid: int) -> list[str]:
    """'pid cmdline' of every live process of a process group (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found.append(f"{entry.name} {cmdline.strip()[:160]}")
    return sorted(found)


def stop_ui(ui: UiProcess, timeout_s: float = 60, grace_s: float = 15) -> StopOutcome:
    """Send SIGTERM to the `fruits ui` process, as a service manager or a user does, wait up to
    `timeout_s` for it to exit and `grace_s` more for its children, and note what was left.

    Whatever happened, nothing of it is left afterwards: the rest of its process group gets
    SIGKILL (and is listed in `killed`).
    """
    outcome = StopOutcome(pid=ui.popen.pid)
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(ui.popen.pid, signal.SIGTERM)
    try:
        outcome.returncode = ui.popen.wait(timeout=timeout_s)
        outcome.stopped = True
    except subprocess.TimeoutExpired:
        pass
    outcome.seconds = time.monotonic() - start
    deadline = time.monotonic() + (grace_s if outcome.stopped else 0)
    while processes_in_group(ui.popen.pid) and time.monotonic() < deadline:
        time.sleep(1)
    outcome.leftovers = processes_in_group(ui.popen.pid)
    outcome.killed = kill_group(ui)
    return outcome


def kill_group(ui: UiProcess) -> list[str]:
    """SIGKILL whatever is left of the UI's process group; what was killed."""
    left = processes_in_group(ui.popen.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(ui.popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        ui.popen.wait(timeout=30)
    return left


# -- pages -----------------------------------------------------------------------------------------


def open_lineage(page: Page, base_url: str) -> None:
    """Open "Lineage" (the global asset graph) with every group expanded, in the graph and in
    the asset tree beside it."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}/asset-groups")
    expect(page.get_by_text("Global asset lineage", exact=True)).to_be_visible()
    expect(materialize_all_button(page)).to_be_enabled()
    # The graph starts with each group collapsed into one box; its settings menu expands them.
    expand = page.get_by_role("menuitem", name="Expand all groups")
    collapse = page.get_by_role("menuitem", name="Collapse all groups")
    click_until_visible(
        page.get_by_role("button", name="settings", exact=True), expand.or_(collapse)
    )
    if expand.is_visible():
        expand.click()
        expect(collapse).to_be_visible()
    page.keyboard.press("Escape")  # the menu stays open after a choice
    expect(collapse).to_be_hidden()
    # The tree: a group row is an `asset_group` icon next to its ▸ toggle (turned -90° when shut).
    toggles = page.locator(
        "button:has([aria-label='arrow_drop_down']):has(+ div [aria-label='asset_group'])"
    )
    expect(toggles.first).to_be_visible()
    for index in range(toggles.count()):
        icon = toggles.nth(index).locator("[aria-label='arrow_drop_down']")
        if "rotate(-90deg)" in (icon.get_attribute("style") or ""):
            toggles.nth(index).click()
    expect(toggles.locator("[style*='rotate(-90deg)']")).to_have_count(0)


def click_until_visible(target: Locator, shows: Locator, attempts: int = 3) -> None:
    """Click `target` until `shows` appears: a click that lands while the page re-renders (or
    while a pop-up opens) is lost, and a menu then never opens."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    for _ in range(attempts - 1):
        target.click()
        try:
            shows.first.wait_for(state="visible", timeout=10 * SECOND_MS)
            return
        except PlaywrightTimeoutError:
            continue
    target.click()
    expect(shows.first).to_be_visible()


def lineage_tree(page: Page, expected: Sequence[str] = (), timeout_s: float = 30) -> dict[str, str]:
    """The asset tree of the lineage page: asset name -> its status icon's label (e.g.
    `run_success`), groups left out. Entries carry their full name in `title`. With `expected`,
    waits (up to `timeout_s`) until each of those assets shows its icon: the tree lists the
    names first and draws their status icons once the statuses have loaded."""
    deadline = time.monotonic() + timeout_s
    tree = _lineage_tree_now(page)
    while not set(expected) <= set(tree) and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        tree = _lineage_tree_now(page)
    return tree


def _lineage_tree_now(page: Page) -> dict[str, str]:
    entries = page.locator("[title]:is(div, span)").evaluate_all(
        """els => els.map(e => {
            const icon = e.parentElement && e.parentElement.querySelector('[role=img]');
            return [e.getAttribute('title'), icon ? icon.getAttribute('aria-label') : null];
        })"""
    )
    return {name: icon for name, icon in entries if icon and icon != "asset_group"}


def lineage_graph_labels(page: Page) -> list[str]:
    """The texts of the graph's boxes (assets and groups); long names are cut in the middle
    with "…" when the graph is zoomed out."""
    texts = page.locator("svg foreignObject").evaluate_all(
        "els => els.map(e => e.innerText || e.textContent || '')"
    )
    return [t.strip() for t in texts if t.strip()]


def shows_name(labels: Sequence[str], name: str) -> bool:
    """Whether a box shows `name`, whole or cut in the middle ("pca_featu…_parquet")."""
    for label in labels:
        for line in label.splitlines():
            line = line.strip()
            if line == name:
                return True
            if "…" in line:
                head, _, tail = line.partition("…")
                if name.startswith(head) and name.endswith(tail) and len(head) + len(tail) > 3:
                    return True
    return False


def materialize_all_button(page: Page) -> Locator:
    # A button's accessible name starts with its icon's label: "materialization Materialize all…".
    return page.get_by_role("button", name=re.compile(r"\bMaterialize all"))


def click_materialize_all(page: Page) -> Locator:
    """Click "Materialize all…" on the lineage page; the launch dialog it opens."""
    from playwright.sync_api import expect

    dialog = page.get_by_role("dialog").filter(has_text=re.compile(r"Launch runs? to materialize"))
    click_until_visible(materialize_all_button(page), dialog)
    expect(
        dialog.get_by_role("button", name=re.compile(r"\bLaunch (backfill|run)"))
    ).to_be_visible()
    settle(dialog)
    return dialog


def choose_partitions(page: Page, dialog: Locator, keys: Sequence[str] | None = None) -> None:
    """In the launch dialog, select every partition (`keys=None`: the "All" button) or exactly
    `keys` ("Custom": each picked in the partition drop-down), then check the count it shows.

    The dialog opens on "Custom" with nothing selected, and its launch button stays disabled.
    """
    from playwright.sync_api import expect

    if keys is None:
        dialog.get_by_role("button", name="All", exact=True).click()
        count = dialog.get_by_text(re.compile(r"^\d+ partitions?$"))
        expect(count).not_to_have_text("0 partitions")
        return
    dialog.get_by_role("button", name="Custom", exact=True).click()
    # "Custom" keeps what was selected before: remove those tags (their "close" icons) first.
    removers = dialog.locator("[aria-label='close']")
    while removers.count():
        removers.first.click()
    expect(dialog.get_by_text("0 partitions", exact=True)).to_be_visible()
    for key in keys:
        search = page.get_by_placeholder("Filter partitions")
        click_until_visible(dialog.locator("[aria-label='expand_more']").first, search)
        search.fill(key)
        # Each item shows its key twice (label and a copy for measuring); match the whole key.
        item = page.get_by_role("menuitem").filter(has=page.get_by_text(key, exact=True))
        expect(item).to_have_count(1)
        item.click()
        # Close the drop-down by clicking the dialog's title (Escape could close the dialog).
        dialog.get_by_text(re.compile(r"^Launch runs? to materialize")).click()
        expect(search).to_be_hidden()
    count = f"{len(keys)} partition" + ("s" if len(keys) != 1 else "")
    expect(dialog.get_by_text(count, exact=True)).to_be_visible()


def launch(page: Page, dialog: Locator) -> tuple[str, str]:
    """Click the dialog's launch button: "Launch backfill" (many partitions) or "Launch 1 run"
    (one partition: one run of every asset). Returns ("backfill", id) or ("run", id)."""
    from playwright.sync_api import expect

    button = dialog.get_by_role("button", name=re.compile(r"^Launch (backfill|1 run)$"))
    expect(button).to_be_enabled()
    label = button.inner_text()
    button.click()
    if "backfill" in label:
        toast = page.get_by_text(re.compile(r"Created backfill \w+"))
        expect(toast).to_be_visible()
        settle(toast)
        match = re.search(r"Created backfill (\w+)", toast.inner_text())
        assert match, toast.inner_text()
        return "backfill", match.group(1)
    # A run: its page opens, or a toast links to it.
    run_url = re.compile(r"/runs/([0-9a-f-]{36})")
    deadline = time.monotonic() + STEP_TIMEOUT_MS / SECOND_MS
    while time.monotonic() < deadline:
        if match := run_url.search(page.url):
            return "run", match.group(1)
        links = page.locator("a[href^='/runs/']").filter(has_text="View")
        if links.count():
            href = links.first.get_attribute("href") or ""
            if match := run_url.search(href):
                return "run", match.group(1)
        time.sleep(0.5)
    raise AssertionError("the launched run could not be found on the page")


RUN_QUERY = """
query ($id: ID!) {
  runOrError(runId: $id) { ... on Run { runId status tags { key value } } }
}
"""


def wait_for_run(
    page: Page,
    base_url: str,
    run_id: str,
    timeout_s: float = RUN_TIMEOUT_S,
    screenshots: Screenshots | None = None,
    name: str = "run",
) -> BackfillResult:
    """Watch a run's page until the run has ended (GraphQL says when); how it ended, in the
    shape of a backfill's result (one run)."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}/runs/{run_id}")
    start = time.monotonic()
    if screenshots is not None:
        screenshots.take(page, f"{name}-running")
    run: dict[str, Any] = {}
    while time.monotonic() < start + timeout_s:
        try:
            run = graphql(base_url, RUN_QUERY, {"id": run_id})["runOrError"]
        except OSError:
            time.sleep(POLL_S)
            continue
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(POLL_S)
    seconds = time.monotonic() - start
    page.reload()
    if run.get("status") == "SUCCESS":
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    if screenshots is not None:
        screenshots.take(page, f"{name}-ended")
    tags = {t["key"]: t["value"] for t in run.pop("tags", [])}
    run["partitions"] = tags.get("dagster/partition")
    status = "COMPLETED_SUCCESS" if run.get("status") == "SUCCESS" else str(run.get("status"))
    page_status = "Succeeded" if run.get("status") == "SUCCESS" else str(run.get("status"))
    return BackfillResult(run_id, status, page_status, [run], seconds)


def open_backfill(page: Page, base_url: str, backfill_id: str) -> None:
    """The backfill's page (Runs › <id>): the toast's "View" link while it shows, else its URL."""
    from playwright.sync_api import expect

    view = page.locator(f"a[href='/runs/b/{backfill_id}']").filter(has_text="View")
    if view.count() and view.first.is_visible():
        view.first.click()
    else:
        page.goto(f"{base_url}/runs/b/{backfill_id}")
    expect(page).to_have_url(re.compile(rf"/runs/b/{backfill_id}"))
    expect(page.get_by_text("Partition selection", exact=True)).to_be_visible()


def backfill_status(page: Page) -> str:
    """The Status shown on a backfill's page ("In progress", "Succeeded", "Failed", …)."""
    box = page.get_by_text("Status", exact=True).locator("xpath=..")
    return box.inner_text().replace("Status", "", 1).strip()


BACKFILL_QUERY = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { id status } }
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


@dataclass
class BackfillResult:
    """How a backfill ended: its status, and each run's id, status and partition range."""

    backfill_id: str
    status: str
    page_status: str
    runs: list[dict[str, Any]]
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED_SUCCESS" and self.page_status == "Succeeded"

    def describe(self) -> str:
        runs = "; ".join(
            f"{r['runId'][:8]} {r['status']} {r.get('partitions') or 'unpartitioned'}"
            for r in self.runs
        )
        ended = "" if self.status in ENDED else " (still going at the time limit)"
        return (
            f"backfill {self.backfill_id}: {self.status}{ended} (page: {self.page_status!r}) "
            f"after {self.seconds:.0f} s; runs: {runs}"
        )


def wait_for_backfill(
    page: Page,
    base_url: str,
    backfill_id: str,
    timeout_s: float = RUN_TIMEOUT_S,
    screenshots: Screenshots | None = None,
    name: str = "backfill",
) -> BackfillResult:
    """Watch the backfill's page until it has ended (GraphQL says when), then read the Status
    the page shows. A screenshot is taken while it runs and once it has ended."""
    from playwright.sync_api import expect

    start = time.monotonic()
    deadline = start + timeout_s
    if screenshots is not None:
        screenshots.take(page, f"{name}-running")
    status, runs = "", []
    while time.monotonic() < deadline:
        try:
            data = graphql(base_url, BACKFILL_QUERY, {"id": backfill_id})
        except OSError:  # a server busy with the runs may answer late: ask again
            time.sleep(POLL_S)
            continue
        status = data["partitionBackfillOrError"]["status"]
        runs = data["runsOrError"]["results"]
        if status in ENDED:
            break
        time.sleep(POLL_S)
    seconds = time.monotonic() - start
    page.reload()
    expect(page.get_by_text("Partition selection", exact=True)).to_be_visible()
    if status == "COMPLETED_SUCCESS":  # the page polls too: give it time to catch up
        expect(page.get_by_text("Status", exact=True).locator("xpath=..")).to_contain_text(
            "Succeeded"
        )
    page_status = backfill_status(page)
    if screenshots is not None:
        screenshots.take(page, f"{name}-ended")
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.pop("tags")}
        first = tags.get("dagster/asset_partition_range_start")
        last = tags.get("dagster/asset_partition_range_end")
        run["partitions"] = None if first is None else f"{first}…{last}"
    return BackfillResult(backfill_id, status, page_status, runs, seconds)


def open_asset(page: Page, base_url: str, asset: str, tab: str | None = None) -> None:
    """An asset's page (Catalog › <asset>), on its Overview or on `tab` ("Partitions", …):
    through a visible link to it when the page has one, else by its URL."""
    from playwright.sync_api import expect

    link = page.locator(f"a[href='/assets/{asset}']")
    if link.count() and link.first.is_visible():
        link.first.click()
    else:
        page.goto(f"{base_url}/assets/{asset}")
    expect(page).to_have_url(re.compile(rf"/assets/{asset}(\?|$)"))
    expect(page.get_by_role("tab", name="Overview")).to_be_visible()
    if tab is not None:
        page.get_by_role("tab", name=tab).click()
        expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")


def metadata_row(page: Page, key: str) -> Locator:
    """The row of the Metadata table (Key | Timestamp | Value) whose key is `key`."""
    first_cell = page.locator("td:first-child").get_by_text(key, exact=True)
    return page.locator("tr").filter(has=first_cell)


def read_metadata(page: Page) -> dict[str, str]:
    """The asset page's Metadata table as {key: the text its Value cell shows}."""
    from playwright.sync_api import expect

    expect(page.get_by_text("Metadata", exact=True).first).to_be_visible()
    # Rows of the outer table only (a markdown value may hold a table of its own).
    rows = page.locator("tr").evaluate_all(
        """rows => rows.filter(r => !r.parentElement.closest('td')).map(r =>
            Array.from(r.children).filter(c => c.tagName === 'TD').map(c => c.innerText))"""
    )
    return {
        cells[0].strip(): cells[-1].strip()
        for cells in rows
        if len(cells) >= 3 and cells[0].strip() != "Key"
    }


def show_markdown(page: Page, key: str) -> Locator:
    """Click "[Show Markdown]" in the `key` row; the dialog that renders it (title `key`)."""
    from playwright.sync_api import expect

    row = metadata_row(page, key).filter(has_text="[Show Markdown]").first
    row.scroll_into_view_if_needed()
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text=key)
    expect(dialog).to_be_visible()
    settle(dialog)
    return dialog


def images_in(locator: Locator) -> list[dict[str, Any]]:
    """Each <img> under `locator`, once loaded: src (cut to 64 characters), alt, natural and
    shown sizes."""
    from playwright.sync_api import expect

    images = locator.locator("img")
    expect(images.first).to_be_visible()
    images.first.evaluate(
        "img => img.complete ? null : new Promise(done => img.addEventListener('load', done))"
    )
    return images.evaluate_all(
        """els => els.map(e => ({src: e.src.slice(0, 64), alt: e.alt,
            naturalWidth: e.naturalWidth, naturalHeight: e.naturalHeight,
            width: e.clientWidth, height: e.clientHeight}))"""
    )


@dataclass
class PartitionsView:
    """An asset's Partitions tab: the keys listed and the counts of each state's filter."""

    keys: list[str]
    counts: dict[str, int]  # "Materialized" -> 3, "Missing" -> 1, …


def read_partitions(page: Page) -> PartitionsView:
    """Read the Partitions tab of the asset page on screen."""
    from playwright.sync_api import expect

    expect(page.get_by_text(re.compile(r"^\d+ Partitions? Selected$"))).to_be_visible()
    counts = {}
    for state in ("Failed", "Materialized", "Materializing", "Missing"):
        label = page.get_by_text(re.compile(rf"^{state} \(\d+\)$"))
        if label.count():
            counts[state] = int(re.search(r"\((\d+)\)", label.first.inner_text()).group(1))
    # The list under "Filter by name…": each key carries its full name in `title`.
    keys = page.get_by_placeholder("Filter by name…").evaluate(
        """input => {
            let box = input;
            while (box && !box.querySelector('div[title]')) box = box.parentElement;
            return box ? [...box.querySelectorAll('div[title]')].map(e => e.title) : [];
        }"""
    )
    return PartitionsView(keys=keys, counts=counts)


def wait_for_partition(
    page: Page, base_url: str, asset: str, key: str, timeout_s: float = 180
) -> PartitionsView:
    """Reload the asset's Partitions tab until `key` is listed; what the tab shows then."""
    from playwright.sync_api import expect

    open_asset(page, base_url, asset, tab="Partitions")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # The tab fetches and renders its list after the page has loaded (slowly on a busy
            # machine): each load gets time to show the key before the next reload.
            expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=15_000)
            return read_partitions(page)
        except AssertionError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"partition {key!r} of {asset} not shown within {timeout_s:.0f} s"
                ) from None
            page.reload()
