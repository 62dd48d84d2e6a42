"""Drive headless Chromium over the DevTools protocol, for tests. Standard library only.

Chromium's ``--remote-debugging-pipe`` speaks the protocol over file descriptors
3 (commands in) and 4 (replies and events out), one JSON message per NUL-ended
chunk, so no websocket client is needed. One page target is attached in
"flat" mode and every command goes to it.

    with Chromium() as browser:
        browser.navigate(path.as_uri())
        browser.evaluate("document.title")
        browser.screenshot(out_png)
        assert not browser.errors
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
         "--mute-audio", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _above(fd: int, lowest: int) -> int:
    """A copy of `fd` numbered `lowest` or higher (close-on-exec); `fd` itself is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return high


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page; records console errors, exceptions and dialogs."""

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900,
                 timeout: float = 15.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no chromium on PATH; install it (Debian: apt-get install -y chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.errors: list[str] = []      # console errors, uncaught exceptions, error log entries
        self.dialogs: list[str] = []     # alert/confirm/prompt messages (each dismissed)
        self._events: queue.Queue = queue.Queue()
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._next_id = 0
        self._session: str | None = None

    # ------------------------------------------------------------ life cycle

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.mkdtemp(prefix="harness-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Lift the browser's ends above 9 so that moving them onto 3 and 4 cannot clobber either.
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))
        args = [*FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]

        def onto_3_and_4() -> None:  # runs in the child between fork and exec
            os.dup2(to_browser_r, 3)  # dup2 copies are inheritable, the originals close on exec
            os.dup2(from_browser_w, 4)

        # close_fds=False keeps the new 3 and 4; Python opens every other descriptor close-on-exec.
        self._proc = subprocess.Popen([self.executable, *args], preexec_fn=onto_3_and_4, close_fds=False,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
            self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                      page=False)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._proc.poll() is None:
                self.call("Browser.close", page=False, timeout=5)
                self._proc.wait(timeout=5)
        except (BrowserError, subprocess.TimeoutExpired, OSError):
            self._proc.kill()
            self._proc.wait(timeout=5)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------ protocol

    def _send(self, message: dict) -> None:
        data = json.dumps(message).encode("utf-8") + b"\0"
        with self._write_lock:
            while data:
                data = data[os.write(self._to_browser, data):]

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[-1] = {"error": {"message": "browser closed the pipe"}}
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                self._dispatch(json.loads(raw))

    def _dispatch(self, msg: dict) -> None:
        if "id" in msg:
            with self._cond:
                self._replies[msg["id"]] = msg
                self._cond.notify_all()
            return
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            self._send({"id": self._new_id(), "sessionId": msg.get("sessionId"),
                        "method": "Page.handleJavaScriptDialog", "params": {"accept": False}})
        self._events.put(msg)

    def _new_id(self) -> int:
        with self._cond:
            self._next_id += 1
            return self._next_id

    def call(self, method: str, params: dict | None = None, *, page: bool = True,
             timeout: float | None = None) -> dict:
        """Send one command (to the page unless page=False) and return its result."""
        ident = self._new_id()
        message = {"id": ident, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while ident not in self._replies and -1 not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no reply within {timeout or self.timeout} s")
                self._cond.wait(left)
            reply = self._replies.pop(ident, None) or self._replies[-1]
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {method} event within {timeout or self.timeout} s")
            try:
                msg = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("method") == method:
                return msg.get("params", {})

    # ------------------------------------------------------------ page helpers

    def navigate(self, url: str) -> None:
        while not self._events.empty():
            self._events.get_nowait()
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"navigate {url}: {reply['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited); a thrown error raises BrowserError."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                               "returnByValue": True, "userGesture": True})
        if "exceptionDetails" in reply:
            d = reply["exceptionDetails"]
            raise BrowserError(f"JS error in {expression[:80]!r}: "
                               f"{d.get('exception', {}).get('description') or d.get('text')}")
        return reply["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the first match of `selector`."""
        # Scrolled to, then measured after two frames: parts of the page that come into view are laid out
        # in the next frame (`content-visibility: auto`) and may move the element.
        box = self.evaluate(f"""(async () => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            const frame = () => new Promise(done => requestAnimationFrame(() => done()));
            el.scrollIntoView({{block: "center"}});
            await frame(); await frame();
            el.scrollIntoView({{block: "center"}});
            await frame();
            const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""")
        if box is None:
            raise BrowserError(f"click: nothing matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 4000), "scale": 1})
        data = self.call("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
