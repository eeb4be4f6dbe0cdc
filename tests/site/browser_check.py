"""Open every page of the built site in headless Chromium and fail on what a reader should never see.

    python tests/site/browser_check.py --html _build/site-smoke/_build/html --source _build/stage-smoke \
        --build-log _build/site-smoke/build.log --screenshots _build/screenshots

Checks, per page: console errors and failed loads, broken images, internal links (and their #anchors)
that lead nowhere, figures drawn below half their natural width with text that ends up below 8 px,
visible "Traceback", "nan", "NaN", "Warning", progress bars, nbval markers or local paths, and glue
references that did not resolve. Chromium is driven through the DevTools protocol (websocket-client). Exit status 1
when anything failed, 0 otherwise; with no Chromium on the machine it says so and exits 0.
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Visible text a reader should never meet: (what it is, pattern, also in code). Case matters: "nan"
# and "NaN" are numbers that failed, "Nancy" is not. Code a chapter shows may say float("nan") or
# UserWarning on purpose, so those are looked for in prose and outputs only; a machine's path or an
# unpasted glue role is wrong anywhere.
FORBIDDEN = [
    ("traceback", re.compile(r"Traceback"), False),
    ("nan", re.compile(r"(?<![\w.])(nan|NaN)(?![\w])"), False),
    ("warning", re.compile(r"Warning"), False),
    ("progress bar", re.compile(r"\d+%\|| \d+(\.\d+)?(it/s|s/it)\]|[\u2588\u258f\u258e\u258d\u258c\u258b\u258a\u2589]{2,}"), False),
    ("local path", re.compile(r"/work/|/tmp/|/home/|/root/|\.venv/(lib|bin)|site-packages"), True),
    ("unresolved glue", re.compile(r"\{glue(:\w+)?\}"), True),
    ("nbval marker", re.compile(r"NBVAL_[A-Z]"), True),
]
# Chromium asks every site for /favicon.ico by itself; a missing one is no fault of a page.
IGNORED_URLS = re.compile(r"/favicon\.ico$")
# The smallest text, in points, that the book's figures draw (das_lib.book.plots.MIN_FONT_PT); with the PNG's
# dpi and the scale the page draws it at, this gives the smallest text in px as displayed.
MIN_FONT_PT = 9.0
MIN_TEXT_PX = 8.0
# Glue warnings of myst-nb in the build log: a key that a page pastes but no run glued.
GLUE_LOG = re.compile(r"^(.*?(glue|Glue).*?(not found|No key|no key|Failed to format).*)$", re.MULTILINE)

# Runs in the page once it has loaded: everything the checks need, as JSON.
PAGE_JS = r"""
(() => {
  const main = document.querySelector('main') || document.body;
  const imgs = [...document.images].map(img => {
    const r = img.getBoundingClientRect();
    return {src: img.currentSrc || img.src, complete: img.complete, natural: img.naturalWidth,
            shown: r.width, visible: r.width > 0 && r.height > 0};
  });
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const text = main.innerText;
  // the same text with code (cell inputs, code blocks in prose) hidden for a moment
  const code = [...main.querySelectorAll('.cell_input, div[class*="highlight-"]:not(.output), code.literal')];
  const saved = code.map(e => e.style.display);
  code.forEach(e => { e.style.display = 'none'; });
  const prose = main.innerText;
  code.forEach((e, i) => { e.style.display = saved[i]; });
  return JSON.stringify({text, prose, imgs, links, ids,
                         pasted: document.querySelectorAll('.pasted-text, .pasted-inline').length,
                         title: document.title});
})()
"""


@dataclass
class Page:
    """What one page showed, and what is wrong with it."""
    path: str
    failures: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)


def png_dpi(data: bytes) -> float:
    """Dots per inch from a PNG's pHYs chunk (matplotlib writes it); 72 when absent."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            return x * 0.0254 if unit == 1 else 72.0
        if kind == b"IDAT":
            break
        pos += 12 + length
    return 72.0


def text_failures(text: str, without_code: str | None = None) -> list[str]:
    """Each forbidden thing in a page's visible text, with the words around it.

    without_code: the same text with code cells' inputs and code blocks left out, for the patterns
    that code may legitimately contain (the whole text when not given)."""
    found = []
    for what, pattern, in_code in FORBIDDEN:
        searched = text if in_code or without_code is None else without_code
        for m in list(pattern.finditer(searched))[:3]:
            around = searched[max(0, m.start() - 50):m.end() + 50].replace("\n", " | ")
            found.append(f"visible {what}: ...{around}...")
    return found


def glue_roles(source: Path) -> int:
    """How many {glue:text} / {glue} roles the markdown of a page's source holds."""
    pattern = re.compile(r"\{glue(:text)?\}`")
    if source.suffix == ".ipynb":
        nb = json.loads(source.read_text())
        text = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                         for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = source.read_text()
    # a role inside a code span or block is shown, not pasted
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"``[^`]*``", "", text)
    return len(pattern.findall(text))


class Browser:
    """One headless Chromium, one tab, spoken to over the DevTools protocol."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900):
        import websocket  # websocket-client, a test extra

        self.profile = tempfile.mkdtemp(prefix="site-check-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--hide-scrollbars", f"--remote-debugging-port={port}",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tab = None
        for _ in range(100):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1))
                tab = next(t for t in tabs if t.get("type") == "page")
                break
            except Exception:
                time.sleep(0.2)
        if tab is None:
            self.close()
            raise RuntimeError("Chromium did not open its DevTools port")
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        """Read events until `method` arrives (or the time is up)."""
        end = time.time() + timeout
        while time.time() < end:
            if any(e.get("method") == method for e in self.events):
                return
            self.ws.settimeout(max(0.1, end - time.time()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except Exception:
                break
        self.ws.settimeout(30)

    def drain(self, seconds: float) -> None:
        """Collect the events of the next `seconds` (late image loads, console messages)."""
        end = time.time() + seconds
        self.ws.settimeout(0.1)
        while time.time() < end:
            try:
                self.events.append(json.loads(self.ws.recv()))
            except Exception:
                pass
        self.ws.settimeout(30)

    def open(self, url: str, timeout: float = 60.0) -> bool:
        """Navigate to `url` and wait until it has loaded; False if it did not within `timeout`."""
        self.events = []
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", timeout)
        loaded = any(e.get("method") == "Page.loadEventFired" for e in self.events)
        self.drain(0.3)
        return loaded

    def page_info(self, attempts: int = 3) -> dict | None:
        """PAGE_JS's answer; a redirecting page (index.html) replaces its document meanwhile, so wait
        for the next load and ask again."""
        for _ in range(attempts):
            try:
                value = self.evaluate(PAGE_JS)
            except RuntimeError:  # the document went away while it was asked
                value = None
            if value is not None:
                return json.loads(value)
            self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
            self.wait_for("Page.loadEventFired", 10.0)
            self.drain(0.3)
        return None

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads since the last navigation."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"uncaught exception: {d.get('exception', {}).get('description', d.get('text'))}")
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                if IGNORED_URLS.search(entry.get("url", "")):
                    continue
                out.append(f"console error: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"failed load: {p.get('errorText')} ({p.get('type')})")
        return out

    def screenshot(self, path: Path, selector: str | None = None) -> None:
        """Save the whole page (capped at 6000 px high), or the element `selector` with a margin, as PNG."""
        if selector:
            # the page was just opened, so it is not scrolled and the box is in page coordinates
            box = self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                if (!e) return null; const r = e.getBoundingClientRect();
                return {{x: r.x, y: r.y, width: r.width, height: r.height}}; }})()""")
        else:
            box = None
        if box:
            clip = {"x": max(0, box["x"] - 20), "y": max(0, box["y"] - 60), "width": box["width"] + 40,
                    "height": box["height"] + 120, "scale": 1}
        else:
            height = min(6000, self.evaluate("document.documentElement.scrollHeight") or 900)
            clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """Stop Chromium and remove its profile."""
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve the site on a free local port, quietly; returns the server and its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the test reports failures itself
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def check_page(browser: Browser, base: str, html: Path, rel: str, source_root: Path | None) -> Page:
    """Open one page and run every check on it."""
    page = Page(rel)
    if not browser.open(base + rel):
        page.failures.append("the page did not finish loading within 60 s")
    info = browser.page_info()
    if info is None:
        page.failures.append("the page could not be read (no document after 3 tries)")
        return page
    page.failures += browser.errors()
    page.failures += text_failures(info["text"], info["prose"])
    page.ids = set(info["ids"])
    page.links = info["links"]
    for img in info["imgs"]:
        name = urllib.parse.unquote(urllib.parse.urlparse(img["src"]).path).lstrip("/")
        if not img["complete"] or img["natural"] == 0:
            page.failures.append(f"broken image: {name}")
            continue
        if not img["visible"] or not name.startswith("_images/"):
            continue  # icons of the theme, hidden images
        scale = img["shown"] / img["natural"]
        page.scales.append(scale)
        dpi = png_dpi((html / name).read_bytes()) if (html / name).suffix == ".png" else 72.0
        text_px = MIN_FONT_PT * dpi / 72.0 * scale
        if scale < 0.5 and text_px < MIN_TEXT_PX:
            page.failures.append(f"figure too small: {name} drawn {img['shown']:.0f} px of {img['natural']} px "
                                 f"(scale {scale:.2f}); its smallest text is about {text_px:.1f} px")
    if source_root is not None:
        stem = Path(rel).with_suffix("")
        for suffix in (".ipynb", ".md"):
            source = source_root / stem.with_suffix(suffix)
            if source.exists():
                expected = glue_roles(source)
                if info["pasted"] < expected:
                    page.failures.append(f"unresolved glue: the source pastes {expected} values, the page shows {info['pasted']}")
                break
    return page


def link_failures(pages: dict[str, Page], html: Path, base: str) -> dict[str, list[str]]:
    """Internal links whose page or #anchor does not exist, per page."""
    out: dict[str, list[str]] = {}
    for rel, page in pages.items():
        for href in sorted(set(page.links)):
            if not href.startswith(base):
                continue  # external: not this test's business (no network here)
            target, _, anchor = href[len(base):].partition("#")
            target = urllib.parse.unquote(target.split("?")[0]) or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (html / target).exists():
                out.setdefault(rel, []).append(f"broken link: {target}")
            elif anchor and target in pages and urllib.parse.unquote(anchor) not in pages[target].ids:
                out.setdefault(rel, []).append(f"broken anchor: {target}#{anchor}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, required=True, help="the built site (jupyter-book's _build/html)")
    parser.add_argument("--source", type=Path, default=None, help="the staged book the site was built from")
    parser.add_argument("--build-log", type=Path, default=None, help="jupyter-book's output, for glue warnings")
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for the two screenshots")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", ""), help="Chromium binary")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    binary = args.chromium or next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), "")
    if not binary:
        print("==> site check SKIPPED: no Chromium on this machine (install Debian's `chromium`; "
              "`make setup` does so when run as root)")
        return 0
    html = args.html.resolve()
    rels = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_") and p.name not in ("search.html", "genindex.html"))
    server, base = serve(html)
    browser = Browser(binary)
    pages: dict[str, Page] = {}
    try:
        for rel in rels:
            try:
                pages[rel] = check_page(browser, base, html, rel, args.source.resolve() if args.source else None)
            except Exception as err:  # one page's trouble is reported with the others, not instead of them
                pages[rel] = Page(rel, [f"the check itself failed on this page: {type(err).__name__}: {err}"])
            if args.screenshots and rel == "book/intro.html":
                browser.screenshot(args.screenshots / "landing.png")
            if args.screenshots and rel == "book/05_sweep.html":
                browser.screenshot(args.screenshots / "05_sweep_main_figure.png", "div.cell_output img")
    finally:
        browser.close()
        server.shutdown()
    for rel, failures in link_failures(pages, html, base).items():
        pages[rel].failures += failures
    if args.build_log and args.build_log.exists():
        log = re.sub(r"\x1b\[[0-9;]*m", "", args.build_log.read_text())  # Sphinx colours its warnings
        for m in GLUE_LOG.finditer(log):
            pages.setdefault("(build log)", Page("(build log)")).failures.append("unresolved glue: " + m.group(1).strip()[:300])
    total = 0
    for rel, page in pages.items():
        status = "ok" if not page.failures else f"{len(page.failures)} failure(s)"
        figures = f"; {len(page.scales)} figures, drawn at {min(page.scales):.2f}-{max(page.scales):.2f} of natural width" if page.scales else ""
        print(f"[site] {rel}: {status}{figures}")
        for failure in page.failures:
            print(f"[site]   - {failure[:400]}")
        total += len(page.failures)
    print(f"==> site check: {len(rels)} pages, {total} failure(s), {time.perf_counter() - start:.1f} s"
          + (f"; screenshots in {args.screenshots}" if args.screenshots else ""))
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
