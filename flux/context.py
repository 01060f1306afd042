"""0.2.7 import path: ``from flux.context import ExecutionContext``."""

from .runtime.context import ExecutionContext as ExecutionContext

__all__ = ["ExecutionContext"]
