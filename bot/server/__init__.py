"""The Hub webhook server (`hub-export-bot serve`).

payload.py    what a delivery says and whether it is ours (pure); --allow patterns
limits.py     every bound the server enforces, with its default and why
body.py       reading a request body within its size and time bounds
transport.py  uvicorn's settings and the request-header deadline
logs.py       log format and the rate limit on lines strangers can cause
queue.py      the durable, bounded SQLite job queue
outcomes.py   what a finished or dead export means for its job (and whether to retry)
child.py      the export process: its environment, its memory limit, its entry point
worker.py     worker threads running each job in a child process, with a timeout
redact.py     local paths out of what the status pages serve
state.py      the private, locked state dir
app.py        the FastAPI transport: secret, parse, filter, enqueue, answer; status pages
page.py       the HTML job list
serve.py      options, environment and uvicorn

Nothing heavy is imported here: export processes import this package.
"""
