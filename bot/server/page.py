"""The small HTML page at `/`: recent jobs for a maintainer who wants to look.

Everything shown comes from the network (repo names) or from exports (error messages), so every value is escaped and
only http(s) URLs become links. Plain string building: one table does not need a template engine.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlsplit

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.message { max-width: 40em; white-space: pre-wrap; word-break: break-word; }
.state { font-weight: 600; }
.queued { color: #666; } .running { color: #b36b00; } .done { color: #1a7f37; }
.failed { color: #cf222e; } .skipped { color: #57606a; }
code { font-size: 13px; }
"""


def _link(url: str | None, text: str) -> str:
    if url and urlsplit(url).scheme in ("http", "https"):
        return f'<a href="{escape(url)}">{escape(text)}</a>'
    return escape(text)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _row(job: dict, hub_url: str) -> str:
    repo, sha = job["repo_id"], job["sha"]
    redacted = sha is None
    repo_url = None if redacted else f"{hub_url}/{quote(repo)}"
    commit_url = None if redacted else f"{hub_url}/{quote(repo)}/commit/{quote(sha)}"
    state = job["state"]
    cells = [
        str(int(job["id"])),
        _link(repo_url, repo),
        "" if redacted else f"<code>{_link(commit_url, sha[:7])}</code>",
        f'<span class="state {escape(state)}">{escape(state)}</span>',
        escape((job["created_at"] or "")[:19].replace("T", " ")),
        escape(_duration(job["duration_s"])),
        str(int(job["attempts"])),
        _link(job["pr_url"], "PR") if job["pr_url"] else "",
    ]
    tds = "".join(f"<td>{c}</td>" for c in cells)
    return f'<tr>{tds}<td class="message">{escape(job["message"] or "")}</td></tr>'


def render_jobs_page(jobs: list[dict], counts: dict[str, int], hub_url: str, refresh_seconds: int = 10) -> str:
    """`jobs` are JobRecord.to_json() dicts (already redacted as configured), newest first."""
    hub_url = hub_url.rstrip("/")
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    rows = "\n".join(_row(job, hub_url) for job in jobs) or '<tr><td colspan="9">No jobs yet.</td></tr>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<title>hub-export-bot jobs</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>hub-export-bot</h1>
<p>{escape(summary)}. Newest first; JSON at <a href="jobs">/jobs</a>.</p>
<table>
<thead><tr><th>#</th><th>repo</th><th>commit</th><th>state</th><th>queued (UTC)</th><th>duration</th>
<th>attempts</th><th>PR</th><th>message</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""
