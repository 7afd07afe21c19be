"""The command contract: the registry, every built-in command's params, and error codes.

The web process validates with it and the workers run it; neither owns it.
"""

from hean.commands import builtin
from hean.commands.builtin import CONTROL_COMMANDS
from hean.commands.errors import error_from, reject_code, validation_error
from hean.commands.params import MAX_ORDERS_PER_COMMAND
from hean.commands.registry import (
    CommandSpec,
    Handler,
    ManyHandler,
    NoParams,
    Outcome,
    RunRefused,
    command,
    command_names,
    declare,
    describe_commands,
    get_command,
    implements,
    implements_many,
    load_command_modules,
)
from hean.messages import CommandError

__all__ = [
    "CONTROL_COMMANDS",
    "MAX_ORDERS_PER_COMMAND",
    "CommandError",
    "CommandSpec",
    "Handler",
    "ManyHandler",
    "NoParams",
    "Outcome",
    "RunRefused",
    "builtin",
    "command",
    "command_names",
    "declare",
    "describe_commands",
    "error_from",
    "get_command",
    "implements",
    "implements_many",
    "load_command_modules",
    "reject_code",
    "validation_error",
]
