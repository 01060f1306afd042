"""The error tree of Flux (defined in ``flux.runtime.errors``)."""

from .runtime.errors import *  # noqa: F403
from .runtime.errors import __all__ as _runtime_all  # noqa: F401
