"""0.2.7 import path ``flux.domain``."""
