"""The console's two heaviest pages in a real browser: the executions list with 10,000
executions in the store, and an execution with 10,000 events.

    python bench/console.py [--executions 10000] [--events 10000] [--runs 5] [--out result.json]

It fills a fresh SQLite store through the store API (no workflow runs: the rows are what the
pages read), serves it with ``flux start server``, and opens each page ``--runs`` times in
Debian's headless Chromium (Selenium + chromium-driver, as the tests). For each page it reports
the median of: ``server_ms`` (the HTML's response time, from the browser's Navigation Timing),
``first_render_ms`` (first contentful paint), ``interactive_ms`` (the console's script has wired
the page: its ``flux:ready`` mark), ``load_ms`` (the load event) and ``html_kb``. JSON on stdout,
a Markdown table with ``--table``. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flux.net.dispatch import source_hash  # noqa: E402
from flux.runtime import codec  # noqa: E402
from flux.runtime.records import ExecutionRecord, StoredEvent, Write  # noqa: E402
from flux.runtime.store import open_store  # noqa: E402

SOURCE = '''
from flux import task, workflow

@task
async def step(i):
    return i

@workflow
async def order(ctx):
    return await step(ctx.input)
'''
STATES = ["COMPLETED"] * 7 + ["FAILED", "PAUSED", "RUNNING"]


def _events(eid: str, calls: int, t0: float) -> list[StoredEvent]:
    out = [StoredEvent(eid, 1, "WORKFLOW_STARTED", "order", "order", codec.encode(1), t0)]
    for i in range(calls):
        group, k = divmod(i, 50)
        call = f"parallel#{group}/step#{k}"
        t = t0 + i * 0.001
        out.append(
            StoredEvent(eid, len(out) + 1, "TASK_STARTED", call, "step",
                        codec.encode({"args": [i], "kwargs": {}, "digest": "x"}), t)
        )
        out.append(StoredEvent(eid, len(out) + 1, "TASK_COMPLETED", call, "step",
                               codec.encode(i), t + 0.0005))
    return out


async def fill(db: str, executions: int, events: int) -> str:
    """Store ``executions`` small executions and one with ``events`` events; its id."""
    async with open_store(db, durability="normal") as store:
        await store.save_workflow("order", SOURCE, source_hash(SOURCE))
        now = time.time() - executions
        batch = []
        for n in range(executions):
            eid = uuid.uuid4().hex
            state = STATES[n % len(STATES)]
            t = now + n
            record = ExecutionRecord(
                execution_id=eid, workflow_name="order", workflow_version=1,
                input=codec.encode(n), state=state, created_at=t, updated_at=t + 0.05,
                output=codec.encode(n) if state == "COMPLETED" else None,
            )
            batch.append(Write(eid, _events(eid, 1, t), insert=record))
            if len(batch) == 500:
                await store.commit(*batch)
                batch = []
        big = "big-" + uuid.uuid4().hex[:8]
        t = time.time()
        record = ExecutionRecord(
            execution_id=big, workflow_name="order", workflow_version=1, input=codec.encode(0),
            state="COMPLETED", created_at=t, updated_at=t + events * 0.0005,
            output=codec.encode(0),
        )
        history = _events(big, (events - 2) // 2, t)
        history.append(StoredEvent(big, len(history) + 1, "WORKFLOW_COMPLETED", "order",
                                   "order", codec.encode(0), t + events * 0.0005))
        await store.commit(*batch, Write(big, history, insert=record))
        return big


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_MEASURE = """
const nav = performance.getEntriesByType('navigation')[0];
const paint = performance.getEntriesByName('first-contentful-paint')[0];
const ready = performance.getEntriesByName('flux:ready')[0];
return {server_ms: nav.responseEnd - nav.requestStart,
        first_render_ms: paint ? paint.startTime : null,
        interactive_ms: ready ? ready.startTime : null, load_ms: nav.loadEventEnd,
        html_kb: nav.transferSize / 1024};
"""


def measure(url: str, runs: int) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)  # warm: static files cached, the server's first request done
        samples = []
        for _ in range(runs):
            driver.get(url)
            time.sleep(0.2)
            samples.append(driver.execute_script(_MEASURE))
    finally:
        driver.quit()
    return {
        key: round(statistics.median(s[key] for s in samples), 1)
        for key in samples[0]
        if all(s[key] is not None for s in samples)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--executions", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="flux-bench-console-")
    server = None
    try:
        db = os.path.join(tmp, "console.db")
        print(f"filling {db}", file=sys.stderr)
        big = trio.run(fill, db, args.executions, args.events)
        port = _free_port()
        env = dict(os.environ, FLUX_SECRET_KEY_FILE=os.path.join(tmp, "key"))
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        server = subprocess.Popen(
            [sys.executable, "-m", "flux.cli", "start", "server", "--port", str(port),
             "--db", db, "--durability", "normal"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        pages = {
            f"executions list ({args.executions} executions)": base + "/ui/executions",
            f"execution ({args.events} events)": f"{base}/ui/executions/{big}",
        }
        result = {
            "environment": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "runs": args.runs,
            },
            "pages": {name: measure(url, args.runs) for name, url in pages.items()},
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.table:
        print("\n| page | server | first render | interactive | load | HTML |", file=sys.stderr)
        print("|---|---|---|---|---|---|", file=sys.stderr)
        for name, m in result["pages"].items():
            print(
                f"| {name} | {m['server_ms']:.0f} ms | {m.get('first_render_ms', 0):.0f} ms | "
                f"{m.get('interactive_ms', 0):.0f} ms | {m['load_ms']:.0f} ms | "
                f"{m['html_kb']:.0f} KB |",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
