"""Option values without pydantic: what keeps ``resultstore get KEY`` quick to start.

typer (0.29) turns each parsed option and argument into its annotated type through a
pydantic ``TypeAdapter``, built on the parameter's first use. Importing pydantic and
building those adapters costs more than the rest of a ``get``: for a command that
takes strings, it is most of the start-up.

:class:`PlainFirstGroup` and :class:`PlainFirstCommand` (the app's and its commands'
classes) give every parameter, ``--help`` included, a coercion that
returns at once the values typer's own would return unchanged: a ``str`` for a ``str``
parameter, a list of them for ``list[str]``, and an enum member chosen by typer's own
``coerce_cli_choice``. Any other value or type (an ``int`` such as ``ls --limit``, a
refused choice, whose message comes from pydantic) goes to typer's coercion, built as
typer builds it. click still parses the command line; nothing here reads ``argv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, get_args, get_origin

from typer._click import Context, Parameter
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_choice
from typer.core import TyperCommand, TyperGroup

__all__ = ["PlainFirstCommand", "PlainFirstGroup"]

_UNCHANGED = object()
"""What :func:`_as_typer_would` returns for a value it leaves to typer."""


def _as_typer_would(descriptor: TypeDescriptor, value: Any, ctx: Any) -> Any:
    """``value`` as typer's coercion would return it, or ``_UNCHANGED`` when unsure."""
    annotation: Any = descriptor.annotation
    if descriptor.parameter_info.parser is not None or descriptor.is_file:
        return _UNCHANGED
    if annotation is str:
        return value if type(value) is str else _UNCHANGED
    if annotation is bool:
        return value if type(value) is bool else _UNCHANGED
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if isinstance(value, (list, tuple)) and all(type(item) is str for item in value):
            return list(value)
        return _UNCHANGED
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(
                value,
                choices=list(annotation),
                case_sensitive=descriptor.parameter_info.case_sensitive,
                ctx=ctx,
            )
        except ValueError:  # refused: typer words the message (through pydantic)
            return _UNCHANGED
    return _UNCHANGED


@dataclass(frozen=True)
class _PlainFirst(RuntimeParam):
    """A parameter's coercion: plain values directly, the rest through typer's own."""

    descriptor: TypeDescriptor

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        found = _as_typer_would(self.descriptor, value, ctx)
        if found is not _UNCHANGED:
            return found
        typers = build_runtime_param(self.descriptor)
        return typers._coerce_value(value, param=param, ctx=ctx)


def _plain_first(params: list[Parameter]) -> list[Parameter]:
    """``params``, each typer parameter not yet coerced given :class:`_PlainFirst`."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if isinstance(descriptor, TypeDescriptor) and getattr(param, "_runtime_param", 0) is None:
            param._runtime_param = _PlainFirst(  # type: ignore[attr-defined]
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )
    return params


class PlainFirstGroup(TyperGroup):
    """The app's group: its parameters coerced by :class:`_PlainFirst`."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_first(super().get_params(ctx))


class PlainFirstCommand(TyperCommand):
    """A command whose parameters are coerced by :class:`_PlainFirst`."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_first(super().get_params(ctx))
