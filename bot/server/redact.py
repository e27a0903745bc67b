"""Local filesystem paths out of what the status pages serve.

`/` and `/jobs` need no secret, and an export's error message easily names a file under the state dir ("No such file
or directory: '/srv/bot/state/work/12/out/onnx/model.onnx'"), which tells a stranger where the server keeps its data
and who runs it. Messages keep the file name (what a maintainer needs) and lose the directories.
"""

from __future__ import annotations

import re

# An absolute path: a "/" that does not continue a word, a tag ("</b>"), a URL ("https://host/a") or another path, then
# at least two path segments. Repo ids ("acme/bert") and fractions ("1/2") are not absolute; URLs keep their paths.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~<-])(?:/[^\s/'\"`:,;()<>\[\]{}]+){2,}/?")
_FILE_URL = re.compile(r"\bfile://[^\s'\"`<>]*")


def _shorten(match: re.Match) -> str:
    return "…/" + match.group(0).rstrip("/").rsplit("/", 1)[-1]


def scrub_paths(text: str | None) -> str | None:
    """`text` with every absolute path of two or more segments replaced by `…/<last segment>`."""
    if not text:
        return text
    return _ABSOLUTE_PATH.sub(_shorten, _FILE_URL.sub("file://…", text))
