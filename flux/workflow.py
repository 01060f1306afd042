"""0.2.7 import path: ``from flux.workflow import workflow``."""

from .runtime.workflow import workflow as workflow

__all__ = ["workflow"]
