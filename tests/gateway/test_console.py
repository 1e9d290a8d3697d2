"""The admin console (/admin/ui) in headless Chromium, driven with Selenium, against real processes: the gateway
with llm-katan as the teacher and the embedded model server (tiny random Llama) as the student, a store with two
registered student versions and captured traffic.

Chromium and chromedriver come from `make chromium` (Debian's packages unpacked under .venv, no root needed;
PROTEGE_CHROMIUM_DIR), else from PATH; without them the browser tests skip, or fail where the Makefile says
they must run (PROTEGE_REQUIRE_CHROMIUM=1). Screenshots of the main pages go to tests/artifacts/console/.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distiller.calibrate import Observation, calibrate
from distiller.evaluate import EvaluationReport, ModelReport, ScoreSummary
from gateway.store import GateResult, StudentDetails, StudentVersion, open_store
from tests.servers import REPO, Server, start_gateway, start_model_server, stop

ADMIN = "console-admin-token"
TASK = "tickets"
SYSTEM = "You extract the city from support tickets."
ARTIFACTS = REPO / "tests" / "artifacts" / "console"
CSS = REPO / "gateway" / "console" / "static" / "console.css"


# --- processes ---------------------------------------------------------------------------------

def details(version: int, parity: float) -> StudentDetails:
    """What the distiller stores for a version: evaluation with baselines, calibration, gate, lineage."""
    evaluation = EvaluationReport(split="test", student=ModelReport(
        f"{TASK}-v{version}", ScoreSummary(parity, parity - 0.04, min(1.0, parity + 0.03), 40), latency_p50_s=0.21,
        prompt_tokens_mean=31.0, completion_tokens_mean=6.5), baselines=[
        ModelReport("base model", ScoreSummary(0.41, 0.33, 0.49, 40), latency_p50_s=0.2),
        ModelReport("majority answer", ScoreSummary(0.35, 0.27, 0.43, 40))])
    observations = [Observation((-0.05 * (i % 9) - 0.01 * i,), 1.0 if i % 5 else 0.0) for i in range(30)]
    calibration = calibrate(observations, target_parity=0.9)
    return StudentDetails(evaluation=evaluation.to_dict(), calibration=calibration.to_dict(),
                          gate=GateResult(True, f"parity {parity:.3f} passes the gate 0.90", 0.9),
                          training_cost_usd=0.00002)


def seed_store(store: Path) -> None:
    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        for version, parity in ((1, 0.93), (2, 0.95)):
            await db.add_student(StudentVersion(
                task=TASK, version=version, status="candidate", model="tiny", created_at=now - 3600 + version,
                updated_at=now, base_model="tiny", trainer="local", dataset_hash=f"sha-{version}",
                threshold=-1000.0, details=details(version, parity)))
        await db.set_student_status(TASK, 1, "active")
        await db.set_rollout(TASK, 0)
        await db.close()

    asyncio.run(run())


@dataclass
class Setup:
    gateway: Server
    store: Path


@pytest.fixture(scope="module")
def setup(katan: Server, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("console")
    student = start_model_server(folder, "--model", str(tiny_model), "--served-model-name", "tiny",
                                 "--threads", "1")
    store = folder / "store.db"
    seed_store(store)
    config = folder / "protege.yaml"
    config.write_text("cascade:\n  timeout_s: 5\n  refresh_s: 0.2\n  shadow_rate: 1.0\n"
                      "  input_cost_per_token: 0.00000001\n  output_cost_per_token: 0.00000002\n"
                      "retry:\n  attempts: 0\ncapture:\n  flush_interval_ms: 50\n")
    gateway = start_gateway(folder, "--config", str(config), "--store", f"sqlite:///{store}", "--teacher",
                            "openai/gpt-4o-mini", "--teacher-api-base", f"{katan.url}/v1", "--teacher-api-key",
                            "sk-t", "--student-api-base", f"{student.url}/v1", "--admin-token", ADMIN)
    yield Setup(gateway, store)
    stop(gateway.proc)
    stop(student.proc)


def chat(gateway: Server, user: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "max_tokens": 40, "temperature": 0, "stop": ["e"], "user": user,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "My order to Oslo is late."}], **extra}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"X-Protege-Task": TASK},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


# --- the browser ---------------------------------------------------------------------------------

def chromium() -> tuple[str, str]:
    """(browser, chromedriver): `make chromium`'s wrappers, else from PATH."""
    folder = Path(os.environ.get("PROTEGE_CHROMIUM_DIR") or REPO / ".venv" / "chromium") / "bin"
    if (folder / "chromium").is_file() and (folder / "chromedriver").is_file():
        return str(folder / "chromium"), str(folder / "chromedriver")
    browser = next(filter(None, map(shutil.which, ("chromium-headless-shell", "chromium", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = "chromium/chromedriver not found: run `make chromium` (Debian's packages unpacked under .venv)"
    if os.environ.get("PROTEGE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for audit(): CSP violations
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG under tests/artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, int(height) + 20))
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    print(f"screenshot: {path}")
    return path


AUDIT = """
const problems = [];
if (!document.documentElement.lang) problems.push('html without lang');
if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one h1');
for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) problems.push('unlabelled ' + el.outerHTML);
}
for (const el of document.querySelectorAll('button, a')) {
  if (!el.textContent.trim() && !el.getAttribute('aria-label')) problems.push('nameless ' + el.outerHTML);
}
for (const table of document.querySelectorAll('table')) {
  if (!table.querySelector('thead th[scope=col]')) problems.push('table without column headers');
}
for (const svg of document.querySelectorAll('svg')) {
  if (svg.getAttribute('role') !== 'img' || !svg.querySelector('title')) problems.push('svg without role/title');
}
for (const el of document.querySelectorAll('[aria-describedby], [aria-labelledby]')) {
  const ids = (el.getAttribute('aria-describedby') || '') + ' ' + (el.getAttribute('aria-labelledby') || '');
  for (const id of ids.split(' ').filter(Boolean)) {
    if (!document.getElementById(id)) problems.push('reference to missing #' + id);
  }
}
return problems;
"""


def audit(driver: Any) -> None:
    """Accessibility basics of the page, and no resource blocked by the Content-Security-Policy."""
    assert driver.execute_script(AUDIT) == []
    assert [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]] == []


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def navigating(driver: Any, action: Callable[[], object]) -> None:
    """Do what loads a new page (a click, Enter in a form) and wait until the old page is gone."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    action()

    def old_page_gone(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or chromedriver's "does not belong to the document" mid-navigation
            return True
        return False

    WebDriverWait(driver, 10).until(old_page_gone)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def login(driver: Any, gateway: Server, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{gateway.url}/admin/ui/login")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    navigating(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click)


def submit(driver: Any, form_id: str) -> None:
    from selenium.webdriver.common.by import By

    navigating(driver, driver.find_element(By.CSS_SELECTOR, f"#{form_id} button[type=submit]").click)


# --- tests ---------------------------------------------------------------------------------------

def test_operator_moves_the_rollout_promotes_and_rolls_back(setup: Setup, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gateway, driver = setup.gateway, browser
    for user in ("a", "b", "c"):
        assert chat(gateway, user).headers["x-protege-route"] == "teacher"

    driver.delete_all_cookies()
    driver.get(f"{gateway.url}/admin/ui")
    assert driver.current_url.endswith("/admin/ui/login")  # signed out: sent to the login page
    audit(driver)
    assert driver.switch_to.active_element.get_attribute("id") == "token"  # ready to paste into
    screenshot(driver, "login")

    login(driver, gateway, "not-the-token")
    assert "not valid" in text_of(driver, "#login-error")
    assert driver.current_url.endswith("/admin/ui/login") and not driver.get_cookies()

    login(driver, gateway, ADMIN)
    assert driver.current_url.endswith("/admin/ui")
    [cookie] = driver.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != ADMIN
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-task="{TASK}"]')
    assert "tiny" in row.find_element(By.CSS_SELECTOR, ".active-student").text
    assert "v1" in row.text and row.find_element(By.CSS_SELECTOR, ".rollout").text == "0%"
    audit(driver)
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"  # the first stop for keyboard users
    screenshot(driver, "overview")

    navigating(driver, row.find_element(By.LINK_TEXT, TASK).click)
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Task {TASK}"
    evaluation = text_of(driver, "#evaluation-table")
    assert "base model" in evaluation and "majority answer" in evaluation and "0.930" in evaluation
    assert driver.find_elements(By.CSS_SELECTOR, "#calibration-chart-title")
    audit(driver)

    # the rollout form, with the keyboard: type the value and press Enter
    field = driver.find_element(By.ID, "rollout-percent")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("100")
    navigating(driver, lambda: field.send_keys(Keys.ENTER))
    assert text_of(driver, "#action-notice") == "Rollout updated."
    assert text_of(driver, "#rollout-value") == "100%"
    assert chat(gateway, "d").headers["x-protege-route"] == "student"
    fallback = chat(gateway, "e", response_format={"type": "json_object"})  # the tiny student writes no JSON
    assert fallback.headers["x-protege-route"] == "fallback"

    def fallback_listed() -> bool:
        driver.get(f"{gateway.url}/admin/ui/tasks/{TASK}")
        return bool(driver.find_elements(By.ID, "fallbacks-table"))

    eventually(fallback_listed)
    assert "validator" in text_of(driver, "#fallbacks-table .reason")
    assert driver.find_elements(By.CSS_SELECTOR, "#savings-chart-title")
    assert text_of(driver, "#cost-per-request").startswith("$")
    audit(driver)
    screenshot(driver, "task")

    navigating(driver, driver.find_element(By.ID, "promote-v2").click)
    assert text_of(driver, "#action-notice") == "Version promoted."
    assert text_of(driver, "#active-student") == "tiny v2"
    assert text_of(driver, "#scorer") == "fields"  # registered without a scorer: judged field by field
    assert text_of(driver, 'tr[data-version="1"] .badge') == "retired"
    eventually(lambda: chat(gateway, "d").headers["x-protege-student"] == "tiny@v2")

    submit(driver, "rollback-form")
    assert text_of(driver, "#action-notice") == "Rolled back."
    assert text_of(driver, "#active-student") == "tiny v1"
    eventually(lambda: chat(gateway, "d").headers["x-protege-student"] == "tiny@v1")

    field = driver.find_element(By.ID, "rollout-percent")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("250")
    driver.execute_script("document.getElementById('rollout-form').noValidate = true")  # past the browser's check
    submit(driver, "rollout-form")
    assert "less than or equal to 100" in text_of(driver, "#action-error")
    assert text_of(driver, "#rollout-value") == "100%"

    submit(driver, "threshold-form")  # an empty threshold: validators only, as registered
    assert text_of(driver, "#action-notice") == "Threshold updated."

    submit(driver, "ramp-form")  # the form's defaults: 5,25,50,100 % with a 1 h dwell, on the active version
    assert text_of(driver, "#action-notice").startswith("Ramp started")
    assert "running at 5%" in text_of(driver, "#ramp-state") and text_of(driver, "#rollout-value") == "5%"
    assert "dwelling at 5 %" in text_of(driver, "#ramp-next")
    audit(driver)
    screenshot(driver, "ramp")
    submit(driver, "stop-ramp-form")
    assert text_of(driver, "#action-notice") == "Ramp stopped."
    assert "stopped at 5%" in text_of(driver, "#ramp-state")
    assert "stopped in the console" in text_of(driver, "#ramp-history")

    navigating(driver, driver.find_element(By.CSS_SELECTOR, ".logout button").click)
    assert driver.current_url.endswith("/admin/ui/login") and not driver.get_cookies()
    driver.get(f"{gateway.url}/admin/ui/tasks/{TASK}")
    assert driver.current_url.endswith("/admin/ui/login")


def signed_in(gateway: Server) -> httpx.Client:
    client = httpx.Client(base_url=gateway.url, follow_redirects=False)
    response = client.post("/admin/ui/login", data={"token": ADMIN})
    assert response.status_code == 303 and response.headers["location"] == "/admin/ui"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/admin/ui" in cookie
    return client


def csrf_of(client: httpx.Client) -> str:
    page = client.get(f"/admin/ui/tasks/{TASK}")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found
    return found.group(1)


def test_wrong_or_missing_credentials_are_refused(setup: Setup) -> None:
    url = setup.gateway.url
    assert httpx.post(f"{url}/admin/ui/login", data={"token": "wrong"}).status_code == 403
    unauthenticated = httpx.get(f"{url}/admin/ui")
    assert unauthenticated.status_code == 303 and unauthenticated.headers["location"] == "/admin/ui/login"
    assert httpx.get(f"{url}/admin/ui", headers={"authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(f"{url}/admin/ui", cookies={"protege_console": ADMIN}).status_code == 303  # not a session
    post = httpx.post(f"{url}/admin/ui/tasks/{TASK}/rollout", data={"percent": "0"})
    assert post.status_code == 401
    bearer = httpx.get(f"{url}/admin/ui", headers={"authorization": f"Bearer {ADMIN}"})
    assert bearer.status_code == 200 and TASK in bearer.text


def test_state_changing_forms_need_the_csrf_token_and_same_origin(setup: Setup) -> None:
    client = signed_in(setup.gateway)
    csrf = csrf_of(client)
    before = client.get("/admin/ui").text
    path = f"/admin/ui/tasks/{TASK}/rollout"
    assert client.post(path, data={"percent": "3"}).status_code == 403
    assert client.post(path, data={"percent": "3", "csrf": "0" * 64}).status_code == 403
    evil = client.post(path, data={"percent": "3", "csrf": csrf}, headers={"origin": "https://evil.example"})
    assert evil.status_code == 403
    assert client.post("/admin/ui/login", data={"token": ADMIN},
                       headers={"origin": "https://evil.example"}).status_code == 403
    assert client.get("/admin/ui").text == before  # nothing changed
    invalid = client.post(path, data={"percent": "nope", "csrf": csrf}, headers={"origin": setup.gateway.url})
    assert invalid.status_code == 400 and "valid number" in invalid.text
    unknown = client.post(f"/admin/ui/tasks/{TASK}/promote", data={"version": "9", "csrf": csrf})
    assert unknown.status_code == 404 and "no version 9" in unknown.text
    # a bearer token cannot be forged by another site: no CSRF token needed
    bearer = httpx.post(f"{setup.gateway.url}{path}", data={"percent": "not a number"},
                        headers={"authorization": f"Bearer {ADMIN}"})
    assert bearer.status_code == 400


def test_pages_send_security_headers_and_the_stylesheet(setup: Setup) -> None:
    client = signed_in(setup.gateway)
    page = client.get("/admin/ui")
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    css = client.get("/admin/ui/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/admin/ui/static/..%2Fconsole.py").status_code == 404
    assert client.get("/admin/ui/tasks/no-such-task").status_code == 404


def test_console_is_disabled_without_an_admin_token(katan: Server, tmp_path: Path,
                                                    gateway_factory: Callable[..., Server]) -> None:
    gateway = gateway_factory("--store", f"sqlite:///{tmp_path / 'store.db'}", "--teacher", "openai/gpt-4o-mini",
                              "--teacher-api-base", f"{katan.url}/v1", "--teacher-api-key", "sk-t",
                              env={"PROTEGE_ADMIN_TOKEN": ""})
    for method, path in (("GET", "/admin/ui"), ("GET", "/admin/ui/login"), ("POST", "/admin/ui/login")):
        response = httpx.request(method, f"{gateway.url}{path}", data={"token": "x"} if method == "POST" else None)
        assert response.status_code == 403 and "Console disabled" in response.text


def test_a_teachers_price_note_is_shown_beside_the_costs(katan: Server, tmp_path: Path) -> None:
    from gateway.config import EmbeddedConfig
    from gateway.embedded import EmbeddedModelServer
    from tests.inprocess import TEST_ADMIN_TOKEN, inprocess_gateway, settings_for

    # the embedded teacher's config as `protege serve` builds it, pointed at llm-katan instead
    embedded = EmbeddedModelServer(EmbeddedConfig()).teacher()
    teacher = embedded.model_copy(update={"api_base": f"{katan.url}/v1"}).model_dump(mode="json")
    teacher["api_key"] = "sk-t"
    with inprocess_gateway(settings_for(None, tmp_path / "store.db", config={"teachers": [teacher]})) as gateway:
        page = gateway.client.get("/admin/ui", headers={"authorization": f"Bearer {TEST_ADMIN_TOKEN}"})
    assert page.status_code == 200
    assert ("Prices: smollm2-135m-instruct runs on this machine: its price (0.15 / 0.6 USD per million input / "
            "output tokens) is for simulation, not a bill.") in page.text


# --- colours ------------------------------------------------------------------------------------

def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_stylesheet_colour_pairs_meet_wcag_aa() -> None:
    css = CSS.read_text()
    colours = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6});", css))
    pairs = re.search(r"contrast pairs:([^*]+)\*/", css)
    assert pairs
    checked = [pair.split("/") for pair in pairs.group(1).split()]
    assert len(checked) >= 10
    for fg, bg in checked:
        assert contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg)
    assert contrast("#ffffff", "#000000") == pytest.approx(21)


# --- page helpers -------------------------------------------------------------------------------

def test_calibration_chart_from_stored_details() -> None:
    import orjson

    from gateway.console.figures import _curve_points, calibration_chart, operating_point

    # as the store gives it back: inf thresholds are null
    stored = StudentDetails.from_json(orjson.loads(orjson.dumps(details(1, 0.93).to_json())))
    student = StudentVersion(task=TASK, version=1, status="active", model="tiny", created_at=0, updated_at=0,
                             threshold=-0.2, details=stored)
    assert stored.calibration is not None
    curve = _curve_points(stored.calibration)
    assert curve[0][0] is None and curve[0][1] == 0  # the serve-nothing point
    at = operating_point(curve, -0.2)
    assert at is not None and at[0] is not None and at[0] >= -0.2
    assert all(p[1] <= at[1] for p in curve if p[0] is not None and p[0] >= -0.2)
    svg = str(calibration_chart(student))
    assert svg.count("<circle") == 2 and "calibrated -0.300" in svg and "current -0.200" in svg
    assert "target parity 0.90" in svg
    no_calibration = StudentVersion(task=TASK, version=2, status="candidate", model="tiny", created_at=0,
                                    updated_at=0)
    assert calibration_chart(no_calibration) is None


def test_money_and_secrets_helpers() -> None:
    from gateway.admin_auth import csrf_token
    from gateway.console.figures import savings_chart, usd

    assert [usd(v) for v in (None, 0, 1234.5, 0.5, 0.000012, -0.25)] == [
        "—", "$0", "$1,234.50", "$0.5000", "$0.000012", "−$0.2500"]
    assert csrf_token(ADMIN, "session-a") != csrf_token(ADMIN, "session-b") != csrf_token("other", "session-b")
    assert ADMIN not in csrf_token(ADMIN, "session-a")
    assert "No data yet" in savings_chart(None)
