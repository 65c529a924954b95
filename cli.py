"""Command-line plumbing shared by the scripts: real booleans, one-line errors, devices, seeds.

The original declared its switches with ``type=bool``, so ``--future_frame False`` meant
True. Here every switch accepts ``--flag``, ``--no-flag`` and ``--flag 0|1|true|false``,
and anything else is rejected by argparse with the flag's name.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import re
import sys
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import numpy as np
import torch

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class CLIError(Exception):
    """A problem the user can fix (a bad flag, a missing or corrupt file, ...).

    ``run_cli`` prints it as one ``error: ...`` line and exits with status 2.
    """


class ParameterError(CLIError, ValueError):
    """A bad argument to library code. It names the parameter (``tile=5: must be ...``) so a
    notebook user knows what to fix; ``run_cli`` shows it as the script's flag instead
    (``--tile 5: must be ...``).

    Args:
        parameter: the parameter's name in the library call.
        value: the value given.
        problem: what is wrong with it.
    """

    def __init__(self, parameter: str, value: object, problem: str):
        self.parameter, self.value, self.problem = parameter, value, problem
        super().__init__(f"{parameter}={value!r}: {problem}")

    def as_flag(self, flags: Mapping[str, str]) -> str:
        """The message for the command line: ``--<flag> <value>: <problem>``."""
        return f"--{flags.get(self.parameter, self.parameter)} {self.value}: {self.problem}"


class Options(types.SimpleNamespace):
    """A script's parsed options, read-only once made: what the command line said, settled
    (defaults resolved) and then never changed, so what is saved with a checkpoint
    (``to_dict``) is what the run used."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"options are read-only (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"options are read-only (tried to delete {name!r})")

    def to_dict(self) -> dict:
        return dict(vars(self))


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the project's one-line errors: a bad command line gets one
    ``error: ...`` line and exit status 2, without the usage (which ``--help`` prints as
    argparse does); a misspelled flag gets the closest real one (``--vidoe`` -> ``--video``).
    Unambiguous prefixes (``--vid``) stay accepted, as the original's scripts accepted them."""

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")

    def unrecognized(self, extras: Sequence[str]) -> str:
        """What is wrong with arguments no option or positional took: the unknown flags, each
        with the closest real flag, or else the stray values."""
        flags = [e.split("=", 1)[0] for e in extras if e.startswith("-") and len(e) > 1]
        if not flags:
            return f"unexpected argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
        known = [s for action in self._actions for s in action.option_strings]
        named = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=1)
            named.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        return f"unrecognized argument{'s' if len(flags) > 1 else ''} {', '.join(named)}"


def str2bool(value: str | bool) -> bool:
    """Parse a command-line boolean; raises ``argparse.ArgumentTypeError`` otherwise."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0, true/false, yes/no), got {value!r}")


def add_bool_flag(
    parser: argparse.ArgumentParser, *flags: str, default: bool | None, help: str
) -> None:
    """Add a switch usable as ``--name``, ``--no-name`` or ``--name 0|1|true|false``.

    Args:
        parser: the parser to extend.
        flags: option strings, e.g. ``"-r", "--residual"``; the last long one names it.
        default: value when the flag is absent (None: the caller decides later).
        help: what the switch does; the default and the accepted forms are appended.
    """
    long_name = [f for f in flags if f.startswith("--")][-1][2:]
    parser.add_argument(
        *flags,
        dest=long_name,
        nargs="?",
        const=True,
        default=default,
        type=str2bool,
        metavar="BOOL",
        help=f"{help} ({'' if default is None else f'default: {default}; '}"
             f"also --no-{long_name}, or --{long_name} 0/1)",
    )
    parser.add_argument(f"--no-{long_name}", dest=long_name, action="store_false",
                        help=argparse.SUPPRESS)


def parse_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """``WxH`` (e.g. 180x144) -> (width, height), for ``type=`` of size options.

    Args:
        text: the option's value; case and surrounding spaces do not matter.
        minimum: smallest width and height accepted.
    """
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 180x144, got {text!r}")
    width, height = int(match[1]), int(match[2])
    if min(width, height) < minimum:
        raise argparse.ArgumentTypeError(
            f"sizes must be at least {minimum}x{minimum}, got {text!r}")
    return width, height


def run_cli(main: Callable, argv: Sequence[str] | None = None, *,
            parse: Callable[[list[str]], object] | None = None,
            flags: Mapping[str, str] | None = None) -> None:
    """Run a script and turn failures into one readable line and a non-zero exit.

    With ``parse``, the command line is parsed first and ``main`` gets the parsed arguments;
    their ``debug`` attribute (``-d/--debug``, ``-v``) asks for full tracebacks. Without it,
    ``main`` gets the raw arguments. ``ISB_DEBUG=1`` in the environment asks for tracebacks too.
    ``CLIError`` (bad input) exits 2; a ``ParameterError`` from library code is shown with the
    flag's name (``flags`` maps parameter names to flag names where they differ). An
    unexpected exception exits 1 with a one-line summary.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ISB_DEBUG") == "1"
    try:
        if parse is not None:
            parsed = parse(args)
            debug = debug or bool(getattr(parsed, "debug", False))
            code = main(parsed)
        else:
            code = main(args)
    except ParameterError as err:
        print(f"error: {err.as_flag(flags or {})}", file=sys.stderr)
        sys.exit(2)
    except CLIError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence for a CLI
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def _one_line(err: Exception) -> str:
    """The user's message, also when a DataLoader worker wrapped it in its traceback text."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return text


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int, flag: str = "--threads", default: int | None = None) -> int:
    """DataLoader worker processes: as asked, but at most one per available core. More only
    compete for the same cores (and make PyTorch print a three-line warning), so the count is
    capped, with a one-line note saying what is used and naming ``flag``. ``requested`` equal
    to the flag's ``default`` is worded as the default (the user most likely gave no flag)."""
    cores = available_cores()
    if requested <= cores:
        return requested
    asked = (f"{flag} defaults to {requested}" if requested == default
             else f"{flag} asks for {requested}")
    print(f"note: using {cores} data loader worker{'s' if cores > 1 else ''} (one per CPU "
          f"core; {asked})", file=sys.stderr)
    return cores


def select_device(gpu_mode: bool, gpus: int = 1) -> torch.device:
    """CUDA when asked for and present; otherwise the CPU, with a one-line notice.

    The original crashed with ``--gpu_mode`` on a machine without CUDA.
    """
    if gpu_mode and torch.cuda.is_available():
        if gpus > torch.cuda.device_count():
            raise CLIError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) found")
        return torch.device("cuda")
    if gpu_mode:
        print("note: no CUDA device found, running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); the original parsed --seed but never used it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
