"""The web console's child process, started by ``dicomnode serve`` (it dies with its parent).

Its own process, so that a slow page or a heavy scrape can never slow reception.
"""

from __future__ import annotations

from dicomnode.config import Settings
from dicomnode.logs import setup_logging


def main() -> int:
    """Entry point of the console child."""
    from dicomnode.runtime.procs import read_payload
    from dicomnode.web.server import serve

    settings: Settings = read_payload()
    setup_logging(settings.logging.level)
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
