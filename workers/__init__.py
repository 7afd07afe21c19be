"""Celery workers: `celery -A workers worker -Q engine` finds the app here.

Importing the package loads only the app (the web process builds task messages with it);
a worker imports the task modules itself (`app.conf.include`).
"""

from workers.app import app

__all__ = ["app"]
