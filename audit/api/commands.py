"""What a plugin's command needs to behave like the built-in ones (added through ``register_commands``).

A command decorated with :func:`one_line_errors` turns a :class:`~audit.api.errors.UsageError` into one line
on stderr and exit code 2, never a traceback — the contract every `audit` command keeps.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import rich.markup
import typer
from rich.console import Console

from audit.api.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True)

def one_line_errors(fn: F) -> F:
    """Turn a UsageError into one line on stderr and exit code 2 — never a traceback.

    Public for plugins: a command added through ``register_commands`` decorates itself with it to behave
    like the built-in commands.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            err.print(
                f"[bold red]error:[/] {one_line(str(e))}", highlight=False, soft_wrap=True, markup=True
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(message: str) -> str:
    """Errors from libraries may carry terminal colour codes or several lines; the CLI shows one clean line."""
    return rich.markup.escape(" ".join(_ANSI.sub("", message).split()))
