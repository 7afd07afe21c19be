"""Celery workers: `celery -A workers worker -Q engine` finds the app here."""

from workers import default, engine, pulse  # noqa: F401  (registers tasks and commands)
from workers.app import app
from workers.commands import load_command_modules

load_command_modules()

__all__ = ["app"]
