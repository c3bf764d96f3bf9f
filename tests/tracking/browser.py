"""A real browser for the MLflow UI tests: Debian's ``chromium``, headless, over DevTools.

Chromium is driven through the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ended by a NUL byte, on file descriptors 3 and 4; no port, no websocket
library). It opens a page, runs MLflow's JavaScript against the server (its API calls,
React, the Plotly charts) in real time, and the test reads the document as it stands,
again and again, until what it waits for is drawn. The DOM is read as a tree: charts are
Plotly SVG, so a chart's points are elements a test can count and place. Each page gets
a new, empty browser profile, as a person opening the UI for the first time. Nothing is
downloaded: the browser is the system's, told to make no background requests.

Without a ``chromium`` the browser tests skip, or fail when ``FEDSILO_REQUIRE_BROWSER=1``
(as in CI, which installs it with apt-get).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest

REQUIRE = "FEDSILO_REQUIRE_BROWSER"

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"}
    | {"source", "track", "wbr"}
)


def chromium() -> str:
    """The chromium binary; skips the test without one (fails when it is required)."""
    for name in (os.environ.get("FEDSILO_CHROMIUM"), "chromium", "chromium-browser"):
        found = shutil.which(name) if name else None
        if found:
            return found
    reason = (
        "no chromium to open the MLflow UI in (Debian: apt-get install chromium; "
        "make test-deps installs it as root)"
    )
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE}=1")
    pytest.skip(reason)


class _DevTools:
    """One headless chromium with a fresh profile, spoken to over its DevTools pipe."""

    def __init__(self, profile: str) -> None:
        to_browser, self._commands = os.pipe()  # chromium reads commands on its fd 3
        self._replies, from_browser = os.pipe()  # and writes replies on its fd 4
        argv = [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-pings",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        if os.geteuid() == 0:  # chromium's own sandbox refuses to run as root
            argv.insert(2, "--no-sandbox")
        # bash puts the two pipe ends on fds 3 and 4, where chromium looks for them
        pipes = 'exec 3<&"$1" 4>&"$2"; shift 2; exec "$@"'
        self.process = subprocess.Popen(
            ["bash", "-c", pipes, "bash", str(to_browser), str(from_browser), *argv],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._last_id = 0
        self.session = ""

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise AssertionError(f"chromium exited while answering {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:  # anything else is an event: not needed
                assert "error" not in reply, f"{method}: {reply['error']}"
                return dict(reply["result"])

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        self.call("Page.navigate", {"url": url})

    def html(self) -> str:
        expression = "document.documentElement.outerHTML"
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return str(result["result"].get("value", ""))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def open_page(url: str, ready: Callable[[Element], bool], *, timeout: float = 90) -> Element:
    """The page at ``url`` in a first-visit browser, once ``ready`` says it is drawn.

    Reads the document every half second; after ``timeout`` seconds, returns it as it
    stands (the test's assertions then say what is missing).
    """
    with tempfile.TemporaryDirectory(prefix="fedsilo-chromium-") as profile:
        browser = _DevTools(profile)
        try:
            browser.open(url)
            deadline = time.monotonic() + timeout
            while True:
                dom = parse(browser.html())
                if ready(dom) or time.monotonic() > deadline:
                    return dom
                time.sleep(0.5)
        finally:
            browser.close()


@dataclass
class Element:
    """An element of a dumped DOM, with its children and its own text."""

    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.walk()

    def text(self) -> str:
        """The element's text, its descendants' included, as a browser would show it."""
        parts = [t for e in self.walk() if e.tag not in ("script", "style") for t in e.texts]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()

    def find(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.walk()
            if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
        ]

    def ancestors(self) -> Iterator[Element]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.open = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.open)
        self.open.children.append(element)
        if tag not in _VOID:
            self.open = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open.children.append(Element(tag, {k: v or "" for k, v in attrs}, parent=self.open))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.open
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.open = node.parent

    def handle_data(self, data: str) -> None:
        self.open.texts.append(data)


def parse(html: str) -> Element:
    """The dumped DOM as a tree of :class:`Element`."""
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


@dataclass(frozen=True)
class Chart:
    """One metric chart of MLflow's run page: its title, legend, and points on screen."""

    title: str
    legend: str
    points: list[tuple[float, float]]  # (x, y) in SVG pixels, y growing downwards


def _is_card(element: Element) -> bool:
    """A chart card: the nearest box around a chart that holds its own resize handle."""
    return any(e.attrs.get("data-testid") == "draggable-card-resize-handle" for e in element.walk())


_TRANSLATE = re.compile(r"translate\(\s*([-\d.e]+)\s*,\s*([-\d.e]+)\s*\)")


def charts(dom: Element) -> list[Chart]:
    """Every Plotly chart card on the page, each with the points of its one trace."""
    out = []
    for plot in dom.find(cls="js-plotly-plot"):
        card = next((a for a in plot.ancestors() if _is_card(a)), None)
        if card is None:
            continue
        points = []
        for point in plot.find("path", "point"):
            found = _TRANSLATE.search(point.attrs.get("transform", ""))
            if found:
                points.append((float(found.group(1)), float(found.group(2))))
        legend = " ".join(
            e.text() for e in card.walk() if e.tag == "span" and e.text().endswith(")")
        )
        out.append(Chart(title=card.text().split(" ")[0], legend=legend, points=points))
    return out
