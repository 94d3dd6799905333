"""`nst gallery --serve`: one run's gallery page served read-only on 127.0.0.1.

The gallery's links are relative and stay inside the output folder, so that folder is
served at "/"; files are read through the storage layer, so a private bucket's run can be
browsed with the caller's own credentials and no presigned URL. What is answered:

- only requests whose Host header names this server (127.0.0.1:PORT or localhost:PORT):
  a site whose name its owner points at 127.0.0.1 (DNS rebinding) gets nothing;
- only GET and HEAD;
- only the page and the files it links (gallery_links.py reads them from the page when the
  server starts): other objects under the output folder are not found;
- and before that, a path not plainly inside the folder (`..` or `.` segments, encoded
  separators or dots, backslashes, control characters, a link out of a local folder) is
  refused before anything is read.
"""

from __future__ import annotations

import mimetypes
import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

from nst_core.batch import storage
from nst_core.batch.gallery_links import page_links

HOST = "127.0.0.1"
# Encoded "/", "\", "." or NUL: decoding them would let one segment name another folder.
_ENCODED = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TYPES = {".md": "text/markdown; charset=utf-8", ".json": "application/json"}


def resolve(root: str, target: str) -> str | None:
    """The URI under `root` that the request target `target` names, or None to refuse it."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None  # absolute-form targets and protocol-relative paths name other places
    if "\\" in parts.path or _ENCODED.search(parts.path):
        return None
    segments = unquote(parts.path[1:]).split("/")
    if any(s in ("", ".", "..") or _CONTROL.search(s) for s in segments):
        return None
    uri = f"{root.rstrip('/')}/{'/'.join(segments)}"
    if not storage.is_s3(root):
        # A symbolic link inside the folder may point anywhere: what it reaches must be inside.
        inside = os.path.realpath(root)
        if not os.path.realpath(uri).startswith(inside.rstrip(os.sep) + os.sep):
            return None
    return uri


class GalleryServer(ThreadingHTTPServer):
    """Serves the gallery page `page` (a path relative to `root`, an output folder or s3://
    prefix) and the files it links; "/" redirects to the page."""

    daemon_threads = True

    def __init__(self, root: str, page: str, port: int = 0):
        self.root, self.page = root.rstrip("/"), page
        # Read before listening: a page that cannot be read leaves no socket behind.
        html = storage.read_bytes(f"{self.root}/{page}").decode("utf-8", errors="replace")
        self.linked = frozenset(f"{self.root}/{path}" for path in page_links(html, page))
        super().__init__((HOST, port), _Handler)
        bound = self.server_address[1]
        self.hosts = frozenset({f"{HOST}:{bound}", f"localhost:{bound}"})

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    @property
    def page_url(self) -> str:
        return self.url + "/".join(quote(segment) for segment in self.page.split("/"))


class _Handler(BaseHTTPRequestHandler):
    server: GalleryServer
    server_version = "nst-gallery"

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _refuse_method(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _answer(self, *, with_body: bool) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.server.hosts:
            self.send_error(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this server answers only {self.server.url} and "
                f"http://localhost:{self.server.server_address[1]}/",
            )
            return
        if urlsplit(self.path).path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/" + quote(self.server.page))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        uri = resolve(self.server.root, self.path)
        if uri is None:
            self.send_error(HTTPStatus.FORBIDDEN, "outside the served folder")
            return
        if uri not in self.server.linked:
            self.send_error(HTTPStatus.NOT_FOUND, "not linked from the gallery page")
            return
        try:
            size = storage.size_if_exists(uri)
            if size is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            body = storage.read_bytes(uri) if with_body else b""
        except storage.StorageError as exc:
            self.log_error("%s", exc)
            self.send_error(HTTPStatus.BAD_GATEWAY, "storage error (see the server's log)")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", _content_type(uri))
        self.send_header("Content-Length", str(len(body) if with_body else size))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if with_body:
            self.wfile.write(body)


def _content_type(uri: str) -> str:
    extension = os.path.splitext(uri)[1].lower()
    if extension in _TYPES:
        return _TYPES[extension]
    guessed, _ = mimetypes.guess_type(uri)
    if guessed and guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed or "application/octet-stream"
