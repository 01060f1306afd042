"""The web console served at ``/ui``: executions, their timelines and events, workflows, workers
and secret names, with resume, cancel, run and secret actions (docs/console.md).

``console_blueprint(server)`` is the Quart blueprint :func:`flux.net.server.create_app`
registers; :mod:`.views` computes what the pages show, :mod:`.auth` holds the login and CSRF
rules, ``templates/console`` and ``static`` are the pages and the one script and stylesheet.
"""

from flux.net.console.routes import console_blueprint as console_blueprint

#: Paths the console answers (its own login and cookie rules apply, not the API's bearer token).
PREFIX = "/ui"


def owns(path: str) -> bool:
    """Whether ``path`` is the console's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


__all__ = ["PREFIX", "console_blueprint", "owns"]
