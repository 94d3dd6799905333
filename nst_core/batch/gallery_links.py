"""The files a gallery page links, read from the page itself: what `nst gallery --serve`
gives, the page included, and nothing else under the output folder.

The page links its run files and thumbnails as `href` and `src` attributes; each job's
full-size output and record are links its script makes from the job data (the `output` and
`record` fields of the JSON in `<script id="gallery-data">`, gallery_page.py's `_job_data`).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlsplit

DATA_ID = "gallery-data"
DATA_LINKS = ("output", "record")
_LINK_ATTRIBUTES = ("href", "src")
# Links are resolved as a browser would, against the page's address on a made-up origin:
# what lands elsewhere (another origin, a `javascript:` or `data:` URL) is no file of ours.
_ORIGIN = "http://gallery.invalid"


def page_links(html: str, page: str) -> set[str]:
    """The path, relative to the served folder, of every file the page at `page` (relative
    to that folder too) links or loads, and of the page itself."""
    parser = _Links()
    parser.feed(html)
    parser.close()
    hrefs = parser.hrefs + _data_links("".join(parser.data))
    base = f"{_ORIGIN}/{quote(page)}"
    found = {page}
    for href in hrefs:
        target = urlsplit(urljoin(base, href.strip()))
        if f"{target.scheme}://{target.netloc}" == _ORIGIN and target.path.startswith("/"):
            found.add(unquote(target.path[1:]))
    return found


def _data_links(data: str) -> list[str]:
    if not data:
        return []
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    jobs = parsed.get("jobs") if isinstance(parsed, dict) else None
    if not isinstance(jobs, list):
        return []  # not a page gallery_page.py wrote: its script shows no job, links none
    return [
        job[field]
        for job in jobs
        if isinstance(job, dict)
        for field in DATA_LINKS
        if isinstance(job.get(field), str)
    ]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.data: list[str] = []
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.hrefs += [v for name in _LINK_ATTRIBUTES if (v := values.get(name)) is not None]
        self._in_data = tag == "script" and values.get("id") == DATA_ID

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data.append(data)
