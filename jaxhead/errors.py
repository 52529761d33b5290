"""The project's error types and the one error path shared by every command-line tool.

Errors caused by the user's input are raised as :class:`UsageError` (a bad flag or config
value: exit code 2) or :class:`DataError` (a missing, unreadable, corrupt or refused file:
exit code 1). :func:`run_cli` turns them, and the expected OS / format errors, into one line on
stderr; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

USAGE_EXIT = 2
DATA_EXIT = 1


class JaxheadError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = DATA_EXIT


class UsageError(JaxheadError, ValueError):
    """A wrong flag, config key or config value (exit code 2)."""

    exit_code = USAGE_EXIT


class DataError(JaxheadError, ValueError):
    """A file that is missing, unreadable, corrupt, of the wrong layout, or refused (exit 1)."""

    exit_code = DATA_EXIT


class MissingWeightsError(JaxheadError, FileNotFoundError):
    """Converted weights are missing; the message lists each piece and its convert command."""

    exit_code = DATA_EXIT


class TrainingDiverged(JaxheadError):
    """Too many consecutive training steps had a non-finite gradient (exit code 1)."""

    exit_code = DATA_EXIT


def _expected_data_errors() -> tuple[type[BaseException], ...]:
    """OS and file-format errors that mean "this input file is bad", not "jaxhead is broken"."""
    import pickle

    out: list[type[BaseException]] = [OSError, pickle.UnpicklingError, EOFError,
                                      UnicodeDecodeError]
    try:
        from safetensors import SafetensorError

        out.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    import json

    out.append(json.JSONDecodeError)
    return tuple(out)


_TORCH_REFUSAL = "Weights only load failed"
# the sentence of torch's refusal that names what was refused
_TORCH_REASON = re.compile(r"(Unsupported[^\n]*|Trying to load unsupported[^\n]*|[^\n]*"
                           r"not an allowed global[^\n]*)")
# advice that would disable the check (load with weights_only=False / allowlist the global)
_ADVICE = ("Please use `torch.serialization", "In PyTorch 2.6", "If you trust the source",
           "weights_only=False", "Check the documentation")


def _torch_refusal(msg: str) -> str:
    """torch's ``weights_only`` refusal -> what it refused, without its advice to turn the
    check off (that would execute code from the file)."""
    m = _TORCH_REASON.search(msg[msg.find(_TORCH_REFUSAL):])
    reason = m.group(1).strip() if m else ""
    for a in _ADVICE:
        if a in reason:
            reason = reason[: reason.find(a)].rstrip()
    reason = reason or "the file asks for code outside the tensor allowlist"
    return f"refused by torch's weights-only loader: {reason.rstrip('. ')} (not loaded)"


def one_line(e: BaseException) -> str:
    """``error: <message>`` with the exception's own text (multi-line lists kept as they are),
    never a traceback, and never advice to disable a safety check."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    if _TORCH_REFUSAL in msg:
        return f"error: {msg[: msg.find(_TORCH_REFUSAL)]}{_torch_refusal(msg)}"
    # any other text suggesting weights_only=False: that would execute the file
    cut = [i for i in (msg.find("In PyTorch 2.6"), msg.find("If you trust the source"),
                       msg.find("weights_only=False")) if i > 0]
    if cut:
        msg = msg[: min(cut)].rstrip() + " (the file asks for code outside the tensor allowlist;"\
            " refused)"
    return f"error: {msg}"


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float flag: a finite number (``nan`` / ``inf`` would run to the
    end and write black images or NaN results)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose flag errors raise :class:`UsageError` (one line and
    exit code 2 through :func:`run_cli`) instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; the project's errors and expected OS / format errors become one line
    on stderr and exit code 2 (usage) or 1 (data). Returns the exit code."""
    try:
        rc = main(argv)
    except JaxheadError as e:
        print(one_line(e), file=sys.stderr)
        return e.exit_code
    except _expected_data_errors() as e:
        print(one_line(e), file=sys.stderr)
        return DATA_EXIT
    return int(rc or 0)
