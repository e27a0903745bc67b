"""The Hub webhook server (`hub-export-bot serve`).

payload.py  what a delivery says and whether it is ours (pure)
queue.py    the durable SQLite job queue
worker.py   worker threads running each job in a child process, with a timeout
app.py      the FastAPI transport: secret, parse, filter, enqueue, answer; status pages
page.py     the HTML job list
serve.py    options, environment and uvicorn

Nothing heavy is imported here: worker child processes import this package.
"""
