"""Give a task a secret (the seed README's "Secret Management" snippet).

    python examples/secret_management.py

(Not named ``secrets.py``: a file of that name in examples/ would shadow the standard library's
``secrets`` module for every script in this folder.)

Secrets live encrypted (AES-256-GCM) in the same SQLite file as the histories. The key comes from
``FLUX_SECRET_KEY`` or, when that is unset, from a key file created on first use with mode 0600
next to the database (``secret.key``). From a shell the secret would be set with
``flux secrets set API_KEY "..."``; this script sets it with the 0.2.7 API
``SecretManager.current().save(...)`` (async code can use ``engine.secrets.set(...)`` on an
engine from ``open_engine()``).

A task declared with ``secret_requests=["API_KEY"]`` receives ``secrets={"API_KEY": ...}``, exactly
the names it asked for. The value is never recorded: not in events, not in ``to_json()``, not in
the database file in clear; an error message that quotes it is recorded with ``***`` instead. A
task asking for a secret that is not set fails before its body runs, naming the secret.
"""

import glob
from typing import Any

from flux import ExecutionContext, Settings, task, workflow
from flux.errors import SecretNotFoundError
from flux.secret_managers import SecretManager

API_KEY = "sk-demo-0123456789abcdef"


@task.with_options(secret_requests=["API_KEY"])
async def secure_task(secrets: dict[str, Any] = {}):  # noqa: B006 (the 0.2.7 style)
    api_key = secrets["API_KEY"]
    # use the key (call an API, sign a request...); return only a masked form of it
    return f"{api_key[:3]}{'*' * (len(api_key) - 7)}{api_key[-4:]}"


@task.with_options(secret_requests=["API_KEY"])
async def leaky_task(secrets: dict[str, Any] = {}):  # noqa: B006 (the 0.2.7 style)
    raise PermissionError(f"the server refused key {secrets['API_KEY']}")


@task.with_options(secret_requests=["MISSING_TOKEN"])
async def needs_missing_secret(secrets: dict[str, Any] = {}):  # noqa: B006 (the 0.2.7 style)
    raise AssertionError("never runs: the secret is looked up before the body")


@workflow
async def secrets_workflow(ctx: ExecutionContext):
    masked = await secure_task()
    try:
        await leaky_task()
    except Exception:
        pass  # recorded with the value masked, see below
    try:
        await needs_missing_secret()
    except SecretNotFoundError as e:
        return {"masked": masked, "missing": str(e)}


if __name__ == "__main__":
    # the store named by FLUX_DB (default .flux/flux.db)
    SecretManager.current().save("API_KEY", API_KEY)
    print("secrets:", SecretManager.current().all())
    ctx = secrets_workflow.run()
    print("masked key:      ", ctx.output["masked"])
    print("missing secret:  ", ctx.output["missing"])
    failed = next(e for e in ctx.events if e.type.value == "TASK_FAILED")
    print("recorded error:  ", failed.value)

    in_history = API_KEY in ctx.to_json()
    db_path = Settings.from_env().db_path
    in_files = False
    for path in glob.glob(db_path + "*"):  # the database, its -wal and -shm files
        with open(path, "rb") as f:
            in_files = in_files or API_KEY.encode() in f.read()
    print("value in the history:", in_history, "| in the database files:", in_files)
    print(ctx.state.value)
