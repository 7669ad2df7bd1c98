"""The error contract every console script keeps (triton-repo, triton-classify, triton-evaluate).

* A failure is one line on stderr, ``PROG: error: what failed; what to do``, and exit code 1.
* A usage mistake (unknown flag, bad flag value) is one line too, and exit code 2.
* ``--verbose`` shows debug logs and, on failure, the traceback and any detail (such as a log tail).
* ``--version`` prints the project's version; ``--help`` shows every option's default.
* Ctrl-C ends with exit code 130.

Errors of our own hierarchy carry their message; anything else is reported as unexpected, with the
hint to rerun with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import NoReturn

from build_tools.errors import ToolkitError, UsageError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def project_version() -> str:
    try:
        return metadata.version("triton-deploy-kit")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".strip()
        return text


class CliParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and the shared --verbose/--version flags."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}; see `{self.prog} --help`\n")
        sys.exit(EXIT_USAGE)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; expected 1 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; expected a number above 0")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: pick a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port; expected 0..65535")
    return value


def make_parser(prog: str, description: str) -> CliParser:
    parser = CliParser(prog=prog, description=description)
    add_common_flags(parser, top_level=True)
    return parser


def add_common_flags(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """--verbose everywhere (also after a subcommand); --version on the top-level parser."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=False if top_level else argparse.SUPPRESS,
        help="debug logging, and the traceback when something fails",
    )
    if top_level:
        parser.add_argument("--version", action="version", version=f"%(prog)s {project_version()}")


def add_subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    original = sub.add_parser

    def add_parser(name: str, **kwargs: object) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("description", kwargs.get("help"))
        child = original(name, **kwargs)  # type: ignore[arg-type]
        add_common_flags(child)
        return child

    sub.add_parser = add_parser  # type: ignore[method-assign]
    return sub


def run(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    quiet_level: int = logging.WARNING,
) -> int:
    """Parse, set up logging, run ``command``, and turn every failure into the one-line contract."""
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else quiet_level,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = parser.prog
    try:
        return int(command(args) or 0)
    except UsageError as e:
        return _fail(prog, e, verbose, EXIT_USAGE)
    except ToolkitError as e:
        return _fail(prog, e, verbose, EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # the contract holds for bugs too: one line, the traceback on request
        hint = "" if verbose else "; rerun with --verbose for the traceback"
        return _fail(prog, e, verbose, EXIT_FAILURE, f"unexpected {type(e).__name__}: {_first_line(e)}{hint}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _fail(prog: str, e: BaseException, verbose: bool, code: int, message: str | None = None) -> int:
    if verbose:
        traceback.print_exception(e, file=sys.stderr)
    sys.stderr.write(f"{prog}: error: {message or _first_line(e)}\n")
    sys.stderr.flush()
    return code
