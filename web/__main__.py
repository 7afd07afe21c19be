"""Entry point of the web process: `python -m web` (eventlet, monkey-patched first)."""

import eventlet

eventlet.monkey_patch()

from web.server import main  # noqa: E402  (must come after monkey_patch)

main()
