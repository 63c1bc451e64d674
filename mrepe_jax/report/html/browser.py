"""Opens a ``report.html`` in headless Chromium (the distribution's own package, never a downloaded
build) and checks it as a reader would: no console error, no request beyond the file itself, a
concept link followed, a value read by hovering, screenshots saved.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages, NUL-terminated, on file descriptors 3 and 4), so nothing beyond the standard library is
needed. ``python -m mrepe_jax.report.html.browser WORKDIR/report.html [PAGE_ID ...]`` runs the
check and saves the screenshots beside the report (one more per page id, e.g.
``feature-hard-topk-50``: ``report_feature-hard-topk-50.png``)."""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

#: Names of the distribution's Chromium binary (Debian: ``chromium``; Ubuntu's deb: ``chromium-browser``).
BINARIES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    """The path of the installed Chromium, or None."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """Chromium failed, or answered a command with an error."""


class Chromium:
    """One headless Chromium and one page in it, driven over the DevTools pipe. Use as a context
    manager; ``events`` collects every event the page sent, in order."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError(f"no Chromium found (looked for {', '.join(BINARIES)} on PATH)")
        self.width, self.height, self.timeout = width, height, timeout
        self.events: list[dict] = []
        self._next = 0
        self._buffer = b""

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="mrepe-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # in the child: the protocol's fds 3 (commands in) and 4 (replies out)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
            os.dup2(high[0], 3)  # dup2 leaves the copies inheritable
            os.dup2(high[1], 4)

        args = [self.binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--metrics-recording-only", "--mute-audio", f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=self._stderr, preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        self._stderr.close()
        self._profile.cleanup()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                self._stderr.seek(0)
                raise BrowserError("Chromium exited: " + self._stderr.read().decode(errors="replace")[-2000:])
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Sends one command (to the page when ``session``) and returns its result."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, since: int = 0) -> dict:
        """The first event ``method`` at or after index ``since`` of ``events``, waiting for it."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events[since:]:
                if event["method"] == method:
                    return event
            since = len(self.events)
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (returned by value)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        since = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired", since)

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def centre_of(self, selector: str) -> tuple[float, float]:
        """The centre of the first element ``selector`` matches, scrolled into view."""
        box = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        if box is None:
            raise BrowserError(f"nothing on the page matches {selector!r}")
        return box[0], box[1]

    def mouse(self, kind: str, x: float, y: float) -> None:
        extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
        self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, **extra)

    def click(self, selector: str) -> None:
        x, y = self.centre_of(selector)
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries the page produced so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                   for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        """The URL of every request the page made."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


def show_pages(browser: Chromium, anchors: Sequence[str], shots: Path) -> dict[str, str]:
    """Opens each page ``#anchor`` of the loaded report and saves ``report_{anchor}.png``; an
    anchor the report lacks is an error naming it and the page ids closest to it."""
    out = {}
    ids = browser.evaluate('[...document.querySelectorAll("section.page[id]")].map(s => s.id)')
    for anchor in anchors:
        anchor = anchor.lstrip("#")
        if anchor not in ids:
            near = difflib.get_close_matches(anchor, ids, n=3, cutoff=0.5)
            raise BrowserError(f"the report has no page #{anchor}"
                               + (f"; did you mean {', '.join('#' + n for n in near)}?" if near else
                                  f" (it has {len(ids)} pages, e.g. {', '.join('#' + n for n in ids[:3])})"))
        browser.evaluate(f"location.hash = {json.dumps('#' + anchor)}")
        time.sleep(0.2)
        browser.evaluate("window.scrollTo(0, 0)")
        out[anchor] = str(browser.screenshot(shots / f"report_{anchor}.png"))
    return out


def check_report(path: Path, screenshots: Path | None = None, pages: Sequence[str] = ()) -> dict:
    """Opens ``path`` from disk and reads it as a user would; returns what it saw (``problems``,
    ``requests`` beyond the file and ``data:`` URLs, the concept link followed, the hovered value,
    a sort and a series toggle, the screenshots' paths). Screenshots go to ``screenshots``
    (default: the report's folder): ``report_first_screen.png``, ``report_concept_page.png`` and
    ``report_{anchor}.png`` for each page id in ``pages`` (e.g. ``feature-hard-topk-50``)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no report at {str(path)!r}")
    shots = Path(screenshots) if screenshots is not None else path.parent
    url = path.as_uri()
    seen: dict = {}
    with Chromium() as browser:
        browser.navigate(url)
        seen["title"] = browser.evaluate("document.title")
        seen["first_screen"] = str(browser.screenshot(shots / "report_first_screen.png"))
        # Sort a table by its second column, twice (ascending, then descending).
        seen["sorted"] = browser.evaluate("""(() => {
            const t = document.querySelector("main table.sortable");
            const th = t.tHead.rows[0].cells[Math.min(1, t.tHead.rows[0].cells.length - 1)];
            th.click();
            const a = th.getAttribute("aria-sort");
            th.click();
            return [a, th.getAttribute("aria-sort")];
        })()""")
        # Toggle the first chart series off from its legend, with the mouse.
        if browser.evaluate("!!document.querySelector('main button.toggle')"):
            browser.click("main button.toggle")
            seen["toggled_off"] = browser.evaluate("""(() => {
                const b = document.querySelector("main button.toggle");
                const chart = document.getElementById(b.dataset.chart);
                const gs = [...chart.querySelectorAll("g.series")]
                    .filter(g => g.dataset.series === b.dataset.series);
                return [b.getAttribute("aria-pressed"), gs.length,
                        gs.every(g => getComputedStyle(g).display === "none")];
            })()""")
        # Follow the first concept link of Table 1, with the mouse.
        link = browser.evaluate("""(() => {
            const h = [...document.querySelectorAll("main h2")].find(h => h.textContent.startsWith("Table 1"));
            let el = h && h.nextElementSibling;
            while (el && el.tagName !== "H2") {
                const a = el.querySelector && el.querySelector("a.concept");
                if (a) { a.id = a.id || "followed-concept-link"; return [a.id, a.getAttribute("href")]; }
                el = el.nextElementSibling;
            }
            return null;
        })()""")
        if link is None:
            raise BrowserError("Table 1 has no concept link")
        browser.click("#" + link[0])
        time.sleep(0.2)
        page = link[1].lstrip("#")
        seen["concept"] = {"href": link[1], "hash": browser.evaluate("location.hash"),
                           "page_shown": browser.evaluate(
                               f"getComputedStyle(document.getElementById({json.dumps(page)})).display !== 'none'"),
                           "report_hidden": browser.evaluate(
                               "getComputedStyle(document.querySelector('main')).display === 'none'"),
                           "heading": browser.evaluate(
                               f"document.querySelector('#{page} h1').textContent")}
        # Hover a value on the concept page: a heatmap cell if it has one, else a bar.
        target = browser.evaluate(f"""(() => {{
            const el = document.querySelector("#{page} svg .cell[data-tip]") ||
                       document.querySelector("#{page} svg [data-tip]");
            el.id = el.id || "hovered-value";
            return [el.id, el.getAttribute("data-tip")];
        }})()""")
        x, y = browser.centre_of("#" + target[0])
        browser.mouse("mouseMoved", x, y)
        seen["hover"] = {"expected": target[1],
                         "tooltip": browser.evaluate("document.getElementById('tip').textContent"),
                         "visible": browser.evaluate("getComputedStyle(document.getElementById('tip')).display "
                                                     "!== 'none'")}
        browser.evaluate("window.scrollTo(0, 0)")
        seen["concept_page"] = str(browser.screenshot(shots / "report_concept_page.png"))
        seen["pages"] = show_pages(browser, pages, shots)
        seen["problems"] = browser.problems()
        seen["requests"] = [u for u in browser.requests() if u != url and not u.startswith("data:")]
    return seen


USAGE = "usage: python -m mrepe_jax.report.html.browser WORKDIR/report.html [PAGE_ID ...]"


def main(argv: list[str]) -> int:
    """Checks a report as ``check_report`` does and prints what it saw; each ``PAGE_ID`` (a
    concept, feature or heads page's anchor) also gets a screenshot. Exit 0 when clean."""
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if len(argv) < 2 else sys.stdout)
        return 2 if len(argv) < 2 else 0
    try:
        seen = check_report(Path(argv[1]), pages=argv[2:])
    except (FileNotFoundError, BrowserError) as e:
        print(f"{e}\n{USAGE}", file=sys.stderr)
        return 2
    print(json.dumps(seen, indent=2))
    ok = (not seen["problems"] and not seen["requests"] and seen["concept"]["page_shown"]
          and seen["hover"]["tooltip"] == seen["hover"]["expected"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
