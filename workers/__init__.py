"""Celery workers: `celery -A workers worker -Q engine` finds the app here."""

from workers import default, engine, pulse  # noqa: F401  (registers tasks and commands)
from workers.app import app

__all__ = ["app"]
