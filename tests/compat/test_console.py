"""The web console in a real browser (Debian's headless chromium, driven by selenium): log in,
see a queue created over AMQP with its depth, purge it from the page with the confirmation,
create a topic from the page, and watch the overview chart draw."""
import os
import shutil

import pika
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from helpers import qname

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("EDDY_TEST_AMQP_URL")), reason="Eddy's own console"),
    pytest.mark.skipif(not shutil.which("chromedriver"), reason="scripts/setup-test-deps.sh installs chromium"),
]


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,1000"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield d
    d.quit()


def text(d, css):
    """An element's text; the tables are redrawn every 2 s, so a lookup may meet a replaced
    element: look again."""
    for _ in range(50):
        try:
            return d.find_element(By.CSS_SELECTOR, css).text
        except (StaleElementReferenceException, NoSuchElementException):
            pass
    raise AssertionError(f"no stable element {css}")


def cell(d, q, cls):
    return text(d, f'#queues-table tr[data-queue="{q}"] .{cls}')


def click(d, css):
    for _ in range(50):
        try:
            return d.find_element(By.CSS_SELECTOR, css).click()
        except (StaleElementReferenceException, NoSuchElementException):
            pass
    raise AssertionError(f"no stable element {css}")


def test_console_shows_an_amqp_queue_with_its_depth_and_purges_it(broker, browser):
    q = qname("console")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    for i in range(42):
        ch.basic_publish("", q, f"m{i}".encode())
    d = browser
    wait = WebDriverWait(d, 20, ignored_exceptions=[StaleElementReferenceException, NoSuchElementException, AssertionError])
    d.get(broker.http + "/")
    wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
    user, pw = d.find_element(By.ID, "login-user"), d.find_element(By.ID, "login-pass")
    user.clear()
    user.send_keys("guest")
    pw.clear()
    pw.send_keys("guest")
    d.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.ID, "user").text == "guest")
    d.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="queues"]').click()
    row = f'#queues-table tr[data-queue="{q}"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    wait.until(lambda d: cell(d, q, "messages") == "42")
    assert cell(d, q, "ready") == "42" and cell(d, q, "vhost") == "/"
    # purge from the page: the confirmation names the queue
    click(d, f"{row} button.purge")
    alert = wait.until(EC.alert_is_present())
    assert q in alert.text
    alert.accept()
    wait.until(lambda d: cell(d, q, "messages") == "0")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    # a topic created from the page exists for Kafka clients
    topic = qname("pagetopic")
    d.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="topics"]').click()
    d.find_element(By.ID, "new-topic-name").send_keys(topic)
    parts = d.find_element(By.ID, "new-topic-partitions")
    parts.clear()
    parts.send_keys("4")
    d.find_element(By.CSS_SELECTOR, "#add-topic-form button[type=submit]").click()
    wait.until(lambda d: text(d, f'#topics-table tr[data-topic="{topic}"] .partitions') == "4")
    # close the AMQP connection from the Connections tab: the client is told why
    local_port = conn._impl._transport._sock.getsockname()[1]
    click(d, '#tabs a[data-tab="connections"]')
    row = f'#connections-table tr[data-connection$=":{local_port} -> 127.0.0.1:{broker.port}"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    click(d, f"{row} button.close-connection")
    alert = wait.until(EC.alert_is_present())
    assert str(local_port) in alert.text
    alert.accept()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(100):
            ch.queue_declare(q, passive=True)
            conn.sleep(0.05)
    assert e.value.reply_code == 320
    # the overview draws its charts from live data, and nothing went wrong in the page
    d.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="overview"]').click()
    wait.until(lambda d: text(d, '#object-totals .stat[data-key="queues"] .value') not in ("", "0"))
    drawn = d.execute_script(
        "const c = document.getElementById('chart-rates'); const x = c.getContext('2d');"
        "const p = x.getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 3; i < p.length; i += 4) if (p[i] > 0) n++; return n;")
    assert drawn > 100, "the rate chart drew nothing"
    assert not d.find_element(By.ID, "error").is_displayed(), d.find_element(By.ID, "error").text
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
