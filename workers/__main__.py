"""`python -m workers worker <options>`: a Celery worker of HEAN's app, exactly as
`celery -A workers worker <options>` runs it (the same `worker` command, options, defaults and
`CELERY_WORKER_*` environment), without loading the rest of Celery's command line first.

Celery's umbrella command imports every sub-command before it runs one: `celery amqp` and
`celery shell` bring click_repl, prompt_toolkit and pygments, and the `celery.commands` entry
points bring Flower's whole web app. About 0.2 s of each worker's start went there, and a
killed engine worker's orders wait for its start (benchmarks/bench_restart.py). `hean up` and
docker-compose start the workers this way; `celery -A workers worker ...` still works.

`python -m workers beat <options>`: Celery's `beat` command the same way, for beat (whose
restart the pulse waits for).

`python -m workers flower <options>`: Flower, as `celery -A workers flower <options>` runs it,
with an event capture that reconnects to Redis at most 2 s apart (workers/monitor.py).
"""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m workers worker [celery worker options]  (celery -A workers worker --help)\n"
    "       python -m workers beat [celery beat options]  (celery -A workers beat --help)\n"
    "       python -m workers flower [flower options]  (celery -A workers flower --help)"
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "flower":
        from workers.monitor import main as flower

        return int(flower(args[1:]) or 0)
    if not args or args[0] not in ("worker", "beat"):
        print(USAGE, file=sys.stderr)
        return 2
    from celery import maybe_patch_concurrency

    maybe_patch_concurrency(["celery", *args])  # the pool's monkey-patching, as `celery` does first
    from celery.bin.base import CLIContext

    if args[0] == "worker":
        from celery.bin.worker import worker as command
    else:
        from celery.bin.beat import beat as command

    from workers.app import app

    command.params.extend(app.user_options.get(args[0], []))
    context = CLIContext(app=app, no_color=False, workdir=None)
    # standalone_mode: click parses, runs and exits with the command's code, as `celery` does
    command.main(
        args=args[1:],
        prog_name=f"python -m workers {args[0]}",
        obj=context,
        auto_envvar_prefix=f"CELERY_{args[0].upper()}",
    )
    return 0  # not reached: click exits


if __name__ == "__main__":
    sys.exit(main())
