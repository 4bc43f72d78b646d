"""The README's quick start, as a reader would copy it: its tasks.py, shop.py and kvern.toml, taken from the
README itself, run on a real instance (private broker node, nginx, gunicorn heads, an elastic pool from zero)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Running

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
QUICK_START_FILES = ("tasks.py", "shop.py", "kvern.toml")
BLOCK = re.compile(r"```(?:python|toml)\n# (\S+)\n(.*?)```", re.DOTALL)


def quick_start_files() -> dict[str, str]:
    """The quick start's files: the first fenced block that opens with `# <name>` after its heading."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    found: dict[str, str] = {}
    for name, body in BLOCK.findall(section):
        found.setdefault(name, body)
    missing = [name for name in QUICK_START_FILES if name not in found]
    assert not missing, f"the README's quick start lacks {missing}"
    return {name: found[name] for name in QUICK_START_FILES}


def follow(client: httpx.Client, page: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state: dict[str, Any] = client.get(page).json()
        if state["status"] not in ("queued", "running"):
            return state
        time.sleep(0.25)
    raise AssertionError(f"{page} still {state} after {timeout}s")


def test_the_quick_start_runs_as_written(tmp_path: Path, start_instance: Callable[..., Running]) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    for name, body in quick_start_files().items():
        (project / name).write_text(body)
    running = start_instance(project / "kvern.toml")
    with httpx.Client(base_url=running.url, timeout=30) as browser:
        assert "Download report" in browser.get("/").text
        clicked = browser.post("/reports")
        assert clicked.status_code == 303, clicked.text
        page = clicked.headers["location"]
        assert re.fullmatch(r"/reports/[0-9a-f-]{36}", page), page
        assert follow(browser, page) == {"status": "succeeded", "progress": 100, "files": ["report.txt"]}
        assert browser.get("/reports/no-such-job").status_code == 404
    with running.client() as api:  # the instance's admin key sees the jobs of the app's own code
        job = api.get(f"/api/v1/jobs/{page.rsplit('/', 1)[1]}").json()
        assert (job["task"], job["args"], job["result"]) == ("tasks.generate_heavy_report", [42], {"user_id": 42})
