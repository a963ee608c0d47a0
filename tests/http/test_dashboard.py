"""The dashboard's routes without a browser: the page, its files, auth and packaging.

Requests go in process through ``make_http`` (tests/http/conftest.py: httpx's ASGI
transport on a blocking portal, which is what Starlette's TestClient does; the TestClient
itself warns, as an error here, unless the ``httpx2`` package is installed).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from starlette.applications import Starlette

import duraray as dr
from duraray.runtime.http import create_app
from duraray.runtime.http.dashboard import STATIC_DIR, dashboard_routes

ROOT = Path(__file__).resolve().parents[2]

# The module-level app the ``client`` fixture (tests/http/conftest.py) runs.
app = dr.App("dashboard-routes")

# References to the page's own files: src/href="static/..." in HTML, imports in scripts.
_HTML_REF = re.compile(r'(?:src|href)="(static/[^"]+)"')
_JS_IMPORT = re.compile(
    r'^\s*(?:import|export)\b[^"\']*?from\s+["\'](\.[^"\']+)["\']', re.MULTILINE
)


@pytest.fixture
def http(make_http):
    """The dashboard's routes alone, in a bare Starlette app."""
    return make_http(Starlette(routes=dashboard_routes()))


def _referenced_files() -> set[str]:
    """Every static path the page loads, following script imports from index.html."""
    html = (STATIC_DIR / "index.html").read_text()
    pending = [ref.removeprefix("static/") for ref in _HTML_REF.findall(html)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.endswith(".js"):
            base = (STATIC_DIR / name).parent
            for target in _JS_IMPORT.findall((STATIC_DIR / name).read_text()):
                pending.append((base / target).resolve().relative_to(STATIC_DIR).as_posix())
    return seen


def test_root_serves_the_page(http):
    """GET / answers the dashboard's HTML, which loads its script from /static."""
    response = http.get("/")
    assert 200 == response.status_code
    assert "text/html" in response.headers["content-type"]
    assert "no-cache" == response.headers["cache-control"]
    assert 'src="static/app.js"' in response.text


def test_every_file_the_page_loads_is_served(http):
    """Each stylesheet and script the page references (imports included) is served with its type."""
    files = _referenced_files()
    assert {
        "app.js",
        "dashboard.css",
        "views/instance.js",
        "views/bulk.js",
        "timeline-view.js",
    } <= files
    for name in sorted(files):
        response = http.get(f"/static/{name}")
        assert 200 == response.status_code, name
        expected = "text/css" if name.endswith(".css") else "javascript"
        assert expected in response.headers["content-type"], name


def test_unknown_static_file_is_not_found(http):
    """A path under /static that is not a file of the page answers 404."""
    assert 404 == http.get("/static/missing.js").status_code


def test_page_needs_no_token_but_the_api_does(client: dr.Client, make_http):
    """With a token, the page and its files are public while the JSON API answers 401."""
    http = make_http(create_app(client, token="s3cret"))
    assert 200 == http.get("/").status_code
    assert 200 == http.get("/static/app.js").status_code
    assert 401 == http.get("/api/instances").status_code
    authorized = http.get("/api/instances", headers={"Authorization": "Bearer s3cret"})
    assert 200 == authorized.status_code


def test_static_files_ship_as_package_data():
    """Every file under static/ matches a package-data glob in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["duraray"]
    package = ROOT / "duraray"
    # setuptools expands the globs like pathlib does: "*" never crosses a "/".
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    files = {path for path in STATIC_DIR.rglob("*") if path.is_file()}
    assert [] == sorted(str(path.relative_to(package)) for path in files - shipped)


def test_partitions_view_shows_and_flags_parked_items():
    """The Partitions view reads each partition's ``parked`` count (a column and a total
    card) and flags a non-zero one with a class the stylesheet colours."""
    view = (STATIC_DIR / "views" / "partitions.js").read_text()
    css = (STATIC_DIR / "dashboard.css").read_text()
    assert "p.parked" in view and '"Parked items"' in view
    for flag in ("parked-alert", "card-alert"):
        assert flag in view and f".{flag}" in css


def test_scripts_never_parse_server_text_as_html():
    """The page builds its DOM from text nodes (ui.js h()/fill()); no script assigns or
    inserts HTML, so ids, names, tags and payloads cannot inject markup."""
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser")
    found = [
        f"{path.relative_to(STATIC_DIR)}: {sink}"
        for path in sorted(STATIC_DIR.rglob("*.js"))
        for sink in sinks
        if sink in path.read_text()
    ]
    assert [] == found
