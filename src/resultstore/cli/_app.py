"""The ``resultstore`` app: its global options, its commands, and the entry point.

:func:`main` is the console script and ``python -m resultstore``. It moves global
options given after the command in front of it (:func:`hoist_global_options`), runs
click without its own error handling, and turns whatever escapes into one line on
stderr and an exit code (:func:`~resultstore.cli._errors.exit_code_for`): Ctrl-C is
"interrupted", 130, a closed output pipe (``| head -1``) ends the process quietly
with 141, as other Unix tools do, and stdout on a full disk is "cannot write to
stdout: No space left on device", 7.

While a command runs, ``sys.stdout`` is stderr and the command's data goes to the
real stdout (:func:`~resultstore.cli._output.stray_prints_to_stderr`, wrapped around
every command by :class:`_Commands`): what a store plugin prints cannot corrupt
``resultstore get KEY > file``. Help and ``--version`` are printed on stdout as usual.

The app builds a command only when click asks for it (:class:`_Commands`), and its
option values skip typer's pydantic coercion when they need none
(:mod:`~resultstore.cli._coercion`): ``resultstore get KEY`` pays for ``get`` alone.
"""

# No `from __future__ import annotations`: typer reads the commands' annotations, and
# evaluating them from strings (a compile() each) took longer than a `get` does.

import contextlib
import functools
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Annotated, Any, cast

import typer
from typer.models import CommandInfo

from resultstore.cli._coercion import PlainFirstCommand, PlainFirstGroup
from resultstore.cli._context import CliOptions, parse_storage_options
from resultstore.cli._errors import (
    EXIT_CODES_HELP,
    ExitCode,
    OutputError,
    error_message,
    exit_code_for,
    print_error,
)
from resultstore.cli._output import checked_stdout, data_out, stray_prints_to_stderr

__all__ = ["app", "hoist_global_options", "main"]

GLOBAL_HELP = (
    "Global options, accepted before or after the command: --storage URL, "
    "--storage-option KEY=VALUE, --json, --quiet, --debug."
)


class _Commands(MutableMapping[str, Any]):
    """The app's commands by name, in the order --help lists them, each built on first use.

    typer builds a click command by reading its function's signature and annotations;
    building all eleven took longer than running ``get``. click asks for the command it
    parsed (and --help for all), so ``resultstore get KEY`` builds ``get`` alone.
    """

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            found = [info for info in _registry.registered_commands if info.name == name]
            if not found:
                raise KeyError(name)
            if found[0].callback is None:  # its module is imported now, not with the app
                module, function = _CALLBACKS[name]
                found[0].callback = getattr(importlib.import_module(module), function)
            command = typer.main.get_command_from_info(
                found[0],
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
            self._built[name] = _data_to_stdout_only(_plain_arguments(command))
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"the command {name!r} cannot be removed")

    def __iter__(self) -> Iterator[str]:
        names = [str(info.name) for info in _registry.registered_commands]
        yield from names
        yield from (name for name in self._built if name not in names)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Group(PlainFirstGroup):
    """The ``resultstore`` group: its commands are :class:`_Commands`, built on first use."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["commands"] = _Commands()  # typer's, built from app.registered_commands, is empty
        super().__init__(**kwargs)


app = typer.Typer(
    name="resultstore",
    help=(
        "Persist results of work to pluggable storage and fetch them back.\n\n"
        "Start with 'resultstore demo'. Storage is --storage URL, else "
        "RESULTSTORE_STORAGE_URL, else file://~/.resultstore/storage. Global options "
        "may also follow the command (resultstore gc --storage URL)."
    ),
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: paragraphs re-wrapped, no <bool> metavars
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_Group,
)
# The commands' registrations (typer's CommandInfo); _Commands builds each from here.
_registry = typer.Typer()


def _version(value: bool) -> None:
    """``--version``: print the installed version and exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("resultstore")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        from resultstore import __version__ as found
    print(f"resultstore {found}")
    raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="URL",
            help="Store URL (file:///path, s3://bucket/prefix, ...). "
            "Default: RESULTSTORE_STORAGE_URL, else file://~/.resultstore/storage.",
        ),
    ] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="KEY=VALUE",
            help="A store option (repeatable); VALUE is parsed as JSON when it can be.",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON, one object per line (after 'put', --json is its value: "
            "write 'resultstore --json put ...').",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Print only data and errors: no summaries, progress or warnings."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Record the global options for the command that follows."""
    given = ctx.ensure_object(CliOptions)
    given.debug = debug
    given.quiet = quiet
    given.json = as_json
    given.storage = storage
    given.storage_options = parse_storage_options(storage_option or [])
    if debug:
        import logging  # here: only --debug needs it (resultstore._log skips unheard records)

        logging.basicConfig(format="%(name)s: %(message)s")
        for name in ("resultstore", "states"):
            logging.getLogger(name).setLevel(logging.DEBUG)


# The commands, in the order --help lists them, and the functions that implement them;
# each says where to put global options.
_CALLBACKS: dict[str, tuple[str, str]] = {
    "put": ("resultstore.cli._records", "put"),
    "get": ("resultstore.cli._records", "get"),
    "ls": ("resultstore.cli._bulk", "list_records"),
    "inspect": ("resultstore.cli._records", "inspect"),
    "rm": ("resultstore.cli._records", "rm"),
    "gc": ("resultstore.cli._bulk", "gc"),
    "check": ("resultstore.cli._bulk", "check"),
    "copy": ("resultstore.cli._bulk", "copy"),
    "import-prefect": ("resultstore.cli._migrate", "import_prefect_command"),
    "stores": ("resultstore.cli._info", "stores"),
    "demo": ("resultstore.cli._info", "demo"),
}
_registry.registered_commands += [
    CommandInfo(name, cls=PlainFirstCommand, epilog=GLOBAL_HELP) for name in _CALLBACKS
]

# --- global options after the command ---------------------------------------------------

_GLOBAL_FLAGS = frozenset({"--json", "--quiet", "-q", "--debug"})
_GLOBAL_VALUED = frozenset({"--storage", "--storage-option"})


def hoist_global_options(args: Sequence[str], group: Any) -> list[str]:
    """``args`` with the global options found after the command moved in front of it.

    click only takes a group's options before the command; people type them after it
    too (``resultstore gc --storage URL``, as with aws and rclone). A command's own
    option of the same name wins (``put KEY --json TEXT`` is put's value), an option's
    value is never mistaken for an option, and nothing after ``--`` moves.
    """
    args = list(args)
    i = 0
    while i < len(args):  # skip the global options before the command
        arg = args[i]
        if arg == "--":
            return args
        if arg in _GLOBAL_VALUED:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            break
    if i >= len(args):
        return args
    command = getattr(group, "commands", {}).get(args[i])
    if command is None:
        return args
    own: set[str] = set()
    own_valued: set[str] = set()
    for param in command.params:
        names = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
        if getattr(param, "param_type_name", "") != "option":
            continue
        own.update(names)
        if not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            own_valued.update(names)
    moved: list[str] = []
    rest: list[str] = []
    j = i + 1
    while j < len(args):
        arg = args[j]
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest += args[j:]
            break
        if name in own:
            rest.append(arg)
            if name in own_valued and "=" not in arg and j + 1 < len(args):
                j += 1
                rest.append(args[j])
        elif name in _GLOBAL_VALUED and ("=" in arg or j + 1 < len(args)):
            moved.append(arg)
            if "=" not in arg:
                j += 1
                moved.append(args[j])
        elif arg in _GLOBAL_FLAGS:
            moved.append(arg)
        else:
            rest.append(arg)
        j += 1
    return [*args[:i], *moved, args[i], *rest]


# --- entry point ------------------------------------------------------------------------


def _stdout_is_closed() -> bool:
    """True when stdout is a pipe (or socket) whose reader went away."""
    import select

    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)  # fd 1: click may have wrapped sys.stdout
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _leaf(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (a task group's failure), else ``exc``."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _leave(code: int) -> None:
    """End the process now, with ``code``: no atexit hooks, no garbage-collection noise.

    Used after Ctrl-C and a closed pipe, where tasks still run on the event loop and
    an orderly exit would print their "exception was never retrieved" warnings.
    """
    for stream in (sys.stderr, data_out(), sys.stdout):
        with contextlib.suppress(Exception):  # OSError, ValueError, OutputError
            stream.flush()
    os._exit(code)


def _argument_usage(param: Any) -> str:
    """An argument in the usage line: ``KEY``, ``[PREFIX]``, ``KEY...``."""
    name = str(param.metavar or param.name).upper()
    if not param.required:
        name = f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


def _plain_arguments(command: Any) -> Any:
    """``command`` with its arguments shown as people write them.

    typer adds the Python type to each argument's help (``KEY <str>``) and braces
    in the usage line (``{KEY}``); the help says ``KEY`` and ``[PREFIX]``, as man
    pages do.
    """
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type_rich = lambda ctx: ""
            param._usage_display_name = lambda param=param: _argument_usage(param)
            param._rich_display_name = lambda param=param: str(param.metavar or param.name)
    return command


def _data_to_stdout_only(command: Any) -> Any:
    """``command``, run with stray prints sent to stderr and its data to the real stdout.

    Wrapped around the command's function, so after its options were parsed: its
    ``--help`` still goes to stdout.
    """
    callback = command.callback

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        with stray_prints_to_stderr():
            return callback(*args, **kwargs)

    command.callback = run
    return command


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: one line, exit 130, at once.

    Raising KeyboardInterrupt instead would unwind through the event loop, whose
    pending tasks and clients then print warnings and tracebacks as they are torn
    down. Nothing is lost by ending now: a record is written to a temporary name and
    renamed into place (or linked from an unnamed file), so an interrupted write
    leaves no partial record, and ``resultstore gc`` removes what it leaves behind.
    """
    print_error("interrupted")
    _leave(ExitCode.INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    import signal

    given = CliOptions()
    command = typer.main.get_command(app)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
        with contextlib.suppress(ValueError):  # main() called off the main thread
            signal.signal(signal.SIGINT, _interrupted)
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with stdout closed (>&-): what it prints would vanish
        print_error(
            "stdout is closed, so nothing this command prints can be written: "
            "redirect it (> FILE, > /dev/null) instead of closing it"
        )
        return ExitCode.BAD_INPUT
    real_stdout = sys.stdout
    sys.stdout = checked_stdout(real_stdout)
    try:
        return _flushed(_run(command, args, given), real_stdout)
    finally:
        sys.stdout = real_stdout


def _discard_output(stream: Any) -> None:
    """Point ``stream``'s file at /dev/null, so what it still buffers cannot fail at exit."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def _flushed(code: int, real_stdout: Any) -> int:
    """``code``, once what stdout buffers is written; a write error is the exit code, if first.

    What a failed command printed before its error is flushed here, and so is an
    output that failed already: its buffer is discarded, not written again at exit
    (where Python would print "Exception ignored" and exit 120).
    """
    try:
        sys.stdout.flush()
    except OutputError as exc:
        if code == ExitCode.OK:
            print_error(error_message(exc))
            code = exc.code
        _discard_output(real_stdout)
    except BrokenPipeError:
        _discard_output(real_stdout)
    return code


def _run(command: Any, args: list[str], given: CliOptions) -> int:
    """Run the command line ``args``; what escapes is one error line and the exit code."""
    try:
        result = command.main(
            args=hoist_global_options(args, command),
            prog_name="resultstore",
            standalone_mode=False,
            obj=given,
        )
    except (KeyboardInterrupt, typer.Abort):
        print_error("interrupted")
        _leave(ExitCode.INTERRUPTED)
        raise AssertionError("unreachable") from None  # pragma: no cover
    except BaseException as caught:
        exc = _leaf(caught)
        if isinstance(exc, KeyboardInterrupt):
            print_error("interrupted")
            _leave(ExitCode.INTERRUPTED)
        # click turns a broken pipe into exit 1; either way, a reader that went away
        # ends the process quietly, as it ends other Unix tools (128 + SIGPIPE).
        pipe = isinstance(exc, BrokenPipeError) or (isinstance(exc, SystemExit) and exc.code == 1)
        if pipe and _stdout_is_closed():
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            _leave(ExitCode.PIPE_CLOSED)
        if isinstance(exc, SystemExit):
            raise
        if not isinstance(exc, Exception):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: show the help
            text = str(cast(Any, exc).format_message())  # empty when rich printed it already
            if text.strip():
                print(text)
            return ExitCode.OK
        if given.debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print_error(error_message(exc))
        return exit_code_for(exc)
    return result if isinstance(result, int) else ExitCode.OK
