"""Builtin tasks and patterns (the 0.2.7 ``flux.tasks`` import path)."""

from .runtime.builtins import choice as choice
from .runtime.builtins import now as now
from .runtime.builtins import pause as pause
from .runtime.builtins import randint as randint
from .runtime.builtins import random as random
from .runtime.builtins import randrange as randrange
from .runtime.builtins import receive as receive
from .runtime.builtins import send_signal as send_signal
from .runtime.builtins import sleep as sleep
from .runtime.builtins import uuid4 as uuid4
from .runtime.graph import Graph as Graph
from .runtime.graph import GraphCycleError as GraphCycleError
from .runtime.graph import GraphError as GraphError
from .runtime.patterns import call as call
from .runtime.patterns import parallel as parallel
from .runtime.patterns import pipeline as pipeline

__all__ = [
    "Graph",
    "GraphCycleError",
    "GraphError",
    "call",
    "choice",
    "now",
    "parallel",
    "pause",
    "pipeline",
    "randint",
    "random",
    "randrange",
    "receive",
    "send_signal",
    "sleep",
    "uuid4",
]
