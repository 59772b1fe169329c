"""The web pages in a real browser: Debian's chromium, headless, driven by Playwright, against
the whole suite on loopback (the session's ``suite``) with the photoprism photos indexed by a
tenant of their own. Upload a photo of M and see M's photos; name a cluster, leaving a face out;
say a face is not the person; rename by keyboard; each change read back through the gateway API.

A screenshot of each page is written to the test's folder; with FACESEARCH_WEB_SCREENSHOTS=DIR
(docs/web) a small copy of each goes there too."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from facesearch.v1 import facesearch_pb2
from launcher.in_process import KEYS
from sdk.client import FaceSearchClient
from services.runtime.ports import free_ports
from services.runtime.settings import load_settings
from tests.conftest import DATA, REPO
from web.server import server as web_server
from web.settings import WebSettings

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api")
ALBUM = DATA / "photoprism"


def chromium() -> str:
    """Debian's chromium: the system's, else the one scripts/fetch_tools.sh unpacks (skips without)."""
    found = shutil.which("chromium")
    if found:
        return found
    from tests.deployment_tools import tool

    return str(tool("chromium"))


@pytest.fixture(scope="module")
def gateway(suite, labels):
    """Tenant "web": the photoprism photos indexed (their paths as URIs) and clustered."""
    with FaceSearchClient(suite.address, KEYS["web"]) as client:
        names = list(labels["photoprism"]["photos"])
        photos = (facesearch_pb2.Photo(id=n, uri=str(ALBUM / n), content=(ALBUM / n).read_bytes()) for n in names)
        results = list(client.index(photos))
        assert not [r for r in results if r.status == facesearch_pb2.PHOTO_STATUS_FAILED]
        client.start_clustering()
        assert client.wait_for_clustering(timeout_s=120).state == facesearch_pb2.CLUSTERING_STATE_DONE
        yield client


@pytest.fixture(scope="module")
def site(gateway, suite):
    """The pages on a free loopback port, a client of the gateway with tenant "web"'s key."""
    [port] = free_ports(1)
    settings = load_settings(
        WebSettings, port=port, gateway_address=suite.address, api_key=KEYS["web"], archive_roots=str(ALBUM)
    )
    server = web_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the web app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


def watched(page):
    """The page, its console errors (a blocked style or script among them) and the responses of
    this site that failed, in lists checked at the end of the test."""
    page.set_default_timeout(20_000)
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on(
        "response",
        lambda response: response.status >= 400 and page.problems.append(f"{response.status} {response.url}"),
    )
    return page


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = watched(context.new_page())
    yield page
    problems = page.problems
    context.close()
    assert not problems, problems


def visit(page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)


def screenshot(page, name: str, folder: Path) -> Path:
    """The page as a PNG in ``folder``, and a small copy (640 pixels wide, 48 colours) in
    FACESEARCH_WEB_SCREENSHOTS when it is set."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("FACESEARCH_WEB_SCREENSHOTS")
    if target:
        out = (REPO / target) if not Path(target).is_absolute() else Path(target)
        out.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail((640, 4000))
            small.quantize(48).save(out / path.name, optimize=True)
    return path


def test_a_photo_of_m_finds_his_photos_boxed(page, site, labels, tmp_path):
    visit(page, site + "/")
    assert page.locator('[data-stat="photos"]').inner_text() != "0"
    screenshot(page, "home", tmp_path)
    page.set_input_files("#selfie", str(ALBUM / "2.jpg"))
    page.get_by_role("button", name="Find my photos").click()
    page.wait_for_selector("#matches")
    found = page.locator(".match .caption").all_inner_texts()
    found = {text.split()[0] for text in found}
    with_m = {name for name, photo in labels["photoprism"]["photos"].items() if "M" in photo["people"]}
    assert "2.jpg" in found and found <= with_m and len(found) >= 0.6 * len(with_m), (found, with_m)
    assert page.locator(".match .box").count() == len(found), "every face boxed"
    for match in page.locator(".match .boxed").all()[:3]:  # the box drawn on the photo, around a face
        photo, box = match.locator("img").bounding_box(), match.locator(".box").bounding_box()
        assert 0.03 * photo["width"] < box["width"] < 0.9 * photo["width"], (photo, box)
        assert photo["x"] <= box["x"] and box["x"] + box["width"] <= photo["x"] + photo["width"] + 1
        assert photo["y"] <= box["y"] and box["y"] + box["height"] <= photo["y"] + photo["height"] + 1
    loaded = page.evaluate("Array.from(document.querySelectorAll('.match img')).every(i => i.naturalWidth > 0)")
    assert loaded, "every photo shown"
    screenshot(page, "findme", tmp_path)

    page.locator(".match a").first.click()  # the photo's page: its faces, boxed
    page.wait_for_selector("#faces")
    assert page.locator(".photo .box").count() >= 1


def test_naming_a_cluster_leaving_a_face_out_then_not_this_person(page, site, gateway, tmp_path):
    visit(page, site + "/clusters")
    assert page.locator(".cluster-link").count() >= 1
    screenshot(page, "clusters", tmp_path)
    clusters = gateway.cluster_faces(faces_per_cluster=60)
    assert clusters, "the photoprism photos make at least one cluster"
    cluster = max(clusters, key=lambda c: c.face_count)
    assert cluster.face_count >= 3
    visit(page, f"{site}/clusters/{cluster.cluster_id}")
    faces = page.locator("#faces .keep")
    assert faces.count() == len(cluster.faces)
    left_out = faces.nth(faces.count() - 1).get_attribute("value")
    page.locator(f'label[for="{faces.nth(faces.count() - 1).get_attribute("id")}"]').click()  # click: not them
    assert not faces.nth(faces.count() - 1).is_checked()
    page.fill("#cluster-name", "Marco")
    screenshot(page, "cluster", tmp_path)
    page.get_by_role("button", name="Name this person").click()
    page.wait_for_selector("h1:has-text('Marco')")

    [marco] = [p for p in gateway.list_people() if p.display_name == "Marco"]
    faces_now = {f.face_id for f in gateway.person_faces(marco.person_id) if not f.reference}
    assert left_out not in faces_now and len(faces_now) == cluster.face_count - 1
    screenshot(page, "person", tmp_path)

    rejected = page.locator("#faces .face-button").first.get_attribute("data-face")
    page.locator("#faces .face-button").first.click()
    page.wait_for_selector("#faces")
    after = {f.face_id for f in gateway.person_faces(marco.person_id) if not f.reference}
    assert rejected not in after and len(after) == len(faces_now) - 1, "not this person, through the API"
    assert page.locator(f'[data-face="{rejected}"]').count() == 0


def test_the_people_page_by_keyboard_and_on_a_phone(browser, site, gateway, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    page = watched(context.new_page())
    visit(page, site + "/people")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling"
    screenshot(page, "people", tmp_path)
    [marco] = [p for p in gateway.list_people() if p.display_name == "Marco"]
    field = page.locator(f'#person-{marco.person_id} input[name="name"]')
    for _ in range(40):  # Tab from the top of the page to the rename field
        page.keyboard.press("Tab")
        if field.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("the rename field cannot be reached with Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("Marco P.")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Marco P.")
    assert [p.display_name for p in gateway.list_people() if p.person_id == marco.person_id] == ["Marco P."]
    visit(page, site + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "home-phone", tmp_path)
    page.set_viewport_size({"width": 1000, "height": 760})
    visit(page, f"{site}/photo?id=overlap/1.jpg&uri={ALBUM / 'overlap' / '1.jpg'}")  # who is in it
    assert page.locator(".photo .box").count() == 2
    assert page.locator("#faces li").all_inner_texts().count("Unknown") == 1, "W is nobody yet"
    assert page.locator(f'#faces a[href="/people/{marco.person_id}"]').inner_text() == "Marco P."
    screenshot(page, "photo", tmp_path)
    problems = page.problems
    context.close()
    assert not problems, problems


def tab_to(page, target, presses: int = 80) -> None:
    """Tab from where the focus is until ``target`` (a locator) has it."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return
    pytest.fail(f"{target} cannot be reached with Tab")


def test_photos_of_two_people_together_by_keyboard_on_a_phone(browser, site, gateway, labels, tmp_path):
    [marco] = [p for p in gateway.list_people() if p.display_name.startswith("Marco")]
    woman = gateway.enroll("W", [ALBUM / "3.jpg", ALBUM / "6.jpg"]).person_id
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    page = watched(context.new_page())
    visit(page, site + "/")
    indexing = page.locator("[data-indexing]")
    assert indexing.inner_text().startswith("No indexing running; last finished "), indexing.inner_text()
    page.wait_for_timeout(3500)  # the script has polled /progress (a failed request would be a problem)
    assert indexing.inner_text().startswith("No indexing running; last finished ")
    for person in (marco.person_id, woman):
        tab_to(page, page.locator(f'#together input[value="{person}"]'))
        page.keyboard.press("Space")
    assert page.locator('#together input[value="all"]').is_checked()
    screenshot(page, "home-together", tmp_path)
    tab_to(page, page.get_by_role("button", name="Find the photos"))
    page.keyboard.press("Enter")
    page.wait_for_selector("#matches")
    assert page.locator("h1").inner_text() == f"Photos of {marco.display_name} and W"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling"
    found = {text.split()[0] for text in page.locator(".match .caption").all_inner_texts()}
    both = {name for name, photo in labels["photoprism"]["photos"].items() if {"M", "W"} <= set(photo["people"])}
    assert found and found <= both, (found, both)
    assert page.locator(".match .with").first.inner_text() == f"with {marco.display_name}, W"
    screenshot(page, "together", tmp_path)
    problems = page.problems
    context.close()
    assert not problems, problems
