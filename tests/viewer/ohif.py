"""The OHIF viewer (prebuilt ``@ohif/app`` dist) served against Orthanc's DICOMweb.

``scripts/setup.sh --test`` unpacks the npm package's ``dist/`` into
``.cache/ohif/<version>/dist`` once; nothing here downloads. :class:`OhifServer` is the
same-origin web server a hospital puts in front of a viewer and its PACS:

- OHIF's files at the origin root (the build uses absolute ``/app.bundle.*.js`` paths),
  with every path that is not a file answered by ``index.html`` (OHIF routes such as
  ``/viewer`` live in the browser);
- our ``app-config.js`` instead of the shipped one, which points at a public demo server:
  one DICOMweb source, relative roots, no tours, banners or cross-origin warnings;
- ``/dicom-web/*`` and ``/wado*`` passed to Orthanc as they are, the Host header
  included: Orthanc builds the absolute BulkDataURI and RetrieveURL in its metadata from
  Host, so without it they would name Orthanc's own port, another origin.

The browser is Debian's Chromium driven by Playwright (:func:`launch_chromium`), with
WebGL from SwiftShader: OHIF's rendering needs WebGL2, and its CPU fallback fails.
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.peers import Orthanc

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
OHIF_DIST = Path(
    os.environ.get("DICOM_NODE_OHIF_DIST", REPO / ".cache" / "ohif" / OHIF_VERSION / "dist")
)
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "ohif"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL2 through ANGLE on SwiftShader (what headless Chromium picks anyway; these make
    # it explicit). Never --disable-software-rasterizer: without WebGL OHIF cannot draw.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

# OHIF's configuration: the Orthanc DICOMweb source on this origin and nothing else.
# Tours ("ohif.tours") put an overlay over the viewer that takes every click; the
# investigational-use dialog is a banner; showErrorDetails puts the cause in the toast.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  customizationService: { 'ohif.tours': { $set: [] } },
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc',
        name: 'orthanc',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""

_PROXIED = ("/dicom-web", "/wado")
_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)


def have_ohif() -> bool:
    return (OHIF_DIST / "index.html").is_file()


@dataclass
class OhifServer:
    """OHIF's dist and Orthanc's DICOMweb on one origin, ``http://127.0.0.1:<port>``."""

    dist: Path
    pacs: Orthanc
    proxy_errors: list[str] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> OhifServer:
        if not (self.dist / "index.html").is_file():
            raise ValueError(f"no OHIF dist in {self.dist} (run scripts/setup.sh --test)")
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ohif-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    owner: OhifServer
    protocol_version = "HTTP/1.1"  # keep-alive: OHIF loads some 40 files per page

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test reads failures from the browser, not from an access log

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(_PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, "text/javascript", APP_CONFIG.encode())
        else:
            self._static(unquote(path))

    def _static(self, path: str) -> None:
        dist = self.owner.dist.resolve()
        target = (dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(dist) or not target.is_file():
            target = dist / "index.html"  # a route of the single-page app
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        self._send(200, kind or "application/octet-stream", target.read_bytes())

    def _proxy(self) -> None:
        pacs = self.owner.pacs
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", pacs.http_port, timeout=60)
        try:
            # skip_host: the browser's own Host header goes to Orthanc (see module doc).
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                upstream.putheader(name, value)
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            if response.status >= 500:
                self.owner.proxy_errors.append(f"{self.command} {self.path}: {response.status}")
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, with software WebGL (never a downloaded browser)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


# What each Cornerstone viewport shows: the image id of its current image (WADO-RS URL
# ending in /instances/<SOP Instance UID>/frames/<n>) and every SVG text box drawn over
# it, line by line (a <tspan> per line), each with whether it is wholly on screen within
# the viewport: a label that runs off the viewport's edge cannot be read there.
_VIEWPORTS_JS = """() => (window.cornerstone?.getEnabledElements() ?? []).map(e => {
  const element = e.viewport.element;
  const box = element.getBoundingClientRect();
  const within = r => r.width > 0 && r.left >= box.left - 0.5 && r.right <= box.right + 0.5
    && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5;
  const texts = [...element.querySelectorAll('svg text')].map(t => {
    const spans = [...t.querySelectorAll('tspan')];
    const parts = spans.length ? spans : [t];
    return parts.map(p => ({text: p.textContent, visible: within(p.getBoundingClientRect())}));
  });
  const id = e.viewport.getCurrentImageId ? e.viewport.getCurrentImageId() : null;
  return {viewportId: e.viewportId, imageId: id || '', texts};
})"""


@dataclass(frozen=True)
class DrawnLine:
    """One line of an SVG text box OHIF drew over a viewport."""

    text: str
    visible: bool  # wholly within the viewport (not clipped at its edge, not at NaN)


@dataclass(frozen=True)
class ViewportState:
    """What one viewport displays: its image and the labels drawn over it."""

    viewport_id: str
    image_id: str
    texts: tuple[tuple[DrawnLine, ...], ...]  # text boxes, line by line

    def shows(self, sop_instance_uid: str, frame: int = 1) -> bool:
        return self.image_id.endswith(f"/instances/{sop_instance_uid}/frames/{frame}")


class ViewerPage:
    """One browser page on OHIF, recording everything that went wrong on it.

    OHIF catches its own exceptions: a failed SR or image shows an error toast ("Something
    went wrong", with the cause since ``showErrorDetails`` is on) and logs a console error,
    and no page error is raised. All three are collected, as are requests that would leave
    127.0.0.1 (aborted: the test machine is offline and so must the viewer be).
    """

    def __init__(self, browser: Any, server: OhifServer) -> None:
        self.server = server
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.outside_requests: list[str] = []
        # A desktop screen: OHIF's side panels leave the viewport about 1550 x 950.
        self.context = browser.new_context(viewport={"width": 1920, "height": 1080})
        self.context.route("**/*", self._only_local)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )

    def _only_local(self, route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", None):
            route.continue_()
        else:
            self.outside_requests.append(route.request.url)
            route.abort()

    def close(self) -> None:
        self.context.close()

    def open_study(self, study_uid: str) -> None:
        """The viewer ("Basic Viewer" mode) on a study, once its first image is drawn."""
        self.page.goto(f"{self.server.url}/viewer?StudyInstanceUIDs={study_uid}")
        self.page.locator('[data-cy="viewport-overlay-bottom-left"]:has-text("W:")').first.wait_for(
            timeout=60_000
        )

    def open_series(self, study_uid: str, series_uid: str) -> None:
        """The viewer on a study with one series in the viewport, as a worklist link does.

        For an SR, OHIF's SR viewport shows the images it references with its regions
        drawn over them. (Double-clicking the SR's thumbnail does the same, but OHIF 3.13.2
        then often leaves the regions undrawn until the next render, whatever the SR.)
        """
        self.page.goto(
            f"{self.server.url}/viewer?StudyInstanceUIDs={study_uid}"
            f"&initialSeriesInstanceUID={series_uid}"
        )

    def thumbnail(self, series_number: int, *, image: bool = True) -> Any:
        """A series' thumbnail in the study browser (SR series have no image)."""
        kind = "study-browser-thumbnail" if image else "study-browser-thumbnail-no-image"
        return self.page.locator(f'[data-cy="{kind}"][data-series="{series_number}"]')

    def viewports(self) -> list[ViewportState]:
        return [
            ViewportState(
                v["viewportId"],
                v["imageId"],
                tuple(
                    tuple(DrawnLine(str(line["text"]), bool(line["visible"])) for line in box)
                    for box in v["texts"]
                ),
            )
            for v in self.page.evaluate(_VIEWPORTS_JS)
        ]

    def error_toasts(self) -> list[str]:
        """Texts of the error notifications on screen ("Something went wrong", ...)."""
        toasts: list[str] = self.page.locator(
            '[data-sonner-toast][data-type="error"]'
        ).all_inner_texts()
        others: list[str] = self.page.get_by_text("Something went wrong").all_inner_texts()
        return toasts + [t for t in others if not any(t in toast for toast in toasts)]

    def problems(self) -> list[str]:
        """Everything that went wrong on the page so far, one line each."""
        return (
            [f"error shown: {t}" for t in self.error_toasts()]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"console error: {e}" for e in self.console_errors]
            + [f"request outside 127.0.0.1: {u}" for u in self.outside_requests]
            + [f"Orthanc failed: {e}" for e in self.server.proxy_errors]
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path
