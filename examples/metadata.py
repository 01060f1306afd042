"""Let a task see its own metadata (the seed README's "Task Metadata" snippet).

    python examples/metadata.py

A task declared with ``metadata=True`` receives ``metadata: TaskMetadata`` with ``task_id`` (the
call's structural id, e.g. ``metadata_aware_task#0``), ``task_name``, ``execution_id`` and
``attempt`` (1 for the first attempt, 2 for the first retry, ...).
"""

from flux import ExecutionContext, task, workflow
from flux.decorators import TaskMetadata


def process_data(data: str) -> str:
    return data[::-1]


@task.with_options(metadata=True)
async def metadata_aware_task(data, metadata: TaskMetadata = {}):  # noqa: B006 (the 0.2.7 style)
    print(f"Task ID: {metadata.task_id}")
    print(f"Task Name: {metadata.task_name}")
    return process_data(data)


@task.with_options(name="upload_{path}", metadata=True, retry_max_attempts=2, retry_delay=0.01)
async def upload(path: str, metadata: TaskMetadata = {}):  # noqa: B006 (the 0.2.7 style)
    if metadata.attempt < 3:
        raise ConnectionError(f"attempt {metadata.attempt} failed")
    return f"{metadata.task_name} succeeded on attempt {metadata.attempt}"


@workflow
async def metadata_workflow(ctx: ExecutionContext[str]):
    reversed_text = await metadata_aware_task(ctx.input)
    uploaded = await upload("report.pdf")
    return [reversed_text, uploaded]


if __name__ == "__main__":
    ctx = metadata_workflow.run("flux")
    print(ctx.state.value, ctx.output)
