"""The two kinds of failure the harness distinguishes, and nothing else.

- `EvalHarnessError`: bad input or an unmet precondition the user can fix (an unknown method, a
  missing file, a dataset that is not available offline). Every user-facing error class derives
  from it; the CLI catches this one class and prints its message as one sentence (exit code 2).
- `CellFailure`: the computation of one evaluation cell failed (out of memory, a non-finite
  result, an lm-eval task that raised). The runner records the cell as failed in the manifest and
  goes on with the next cell (`is_cell_failure` says which exceptions count).

Any other exception is a bug and propagates unchanged. Code that hands a cell's work to another
library (lm-eval) turns that library's own failures into the cell's failure with
`delegated_failures`, which lets cell failures and bugs of evalharness through unchanged.

No torch import at module level: the CLI imports this before anything heavy.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator


class EvalHarnessError(Exception):
    """A user-facing error: its message is one sentence naming the bad value and what is valid."""


class UsageError(EvalHarnessError, ValueError):
    """Bad command-line input."""


class CellFailure(Exception):
    """The computation of one cell failed; the run records it and continues."""


class NonFiniteError(CellFailure, ArithmeticError):
    """A NaN or infinite result: the cell fails instead of writing a meaningless number."""


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA, MPS), Python's MemoryError, and the RuntimeError
    the CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch  # lazy: ≈ 1.4 s; every module imports this one, `plot` and `compare` included

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_MESSAGES)


def is_cell_failure(exc: BaseException) -> bool:
    """Whether `exc` is a failure of a cell's computation (recorded; the run goes on) rather than
    a bug or a user error (which propagate)."""
    return isinstance(exc, CellFailure) or is_out_of_memory(exc)


def failure_text(exc: BaseException | str) -> str:
    """`Type: message` for the manifest; a string passes through."""
    return exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"



_OWN_PACKAGE = os.path.dirname(os.path.realpath(__file__))


def _package_dir(module: str) -> str | None:
    """The folder of an imported package (None when it is not imported)."""
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    return os.path.dirname(os.path.realpath(path)) if path else None


def _inside(filename: str, folder: str | None) -> bool:
    return folder is not None and os.path.realpath(filename).startswith(folder + os.sep)


def raised_by_harness(exc: BaseException, delegate: str = "lm_eval") -> bool:
    """Whether `exc` is a bug of evalharness rather than a failure of the `delegate` library.

    Decided by the innermost frame of the traceback that lies either in evalharness's package or in
    the delegate's: evalharness's frame means our code raised it or called a library (torch,
    pandas) that did, even when the delegate had called into our code (the LM wrapper); the
    delegate's frame means the delegate or what it drives (its task generators, `datasets`) raised.
    """
    theirs = _package_dir(delegate)
    owner = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if _inside(filename, _OWN_PACKAGE):
            owner = "ours"
        elif _inside(filename, theirs):
            owner = "theirs"
        tb = tb.tb_next
    return owner == "ours"


@contextlib.contextmanager
def delegated_failures(failure: Callable[[Exception], CellFailure],
                       delegate: str = "lm_eval") -> Iterator[None]:
    """Run a cell's call into `delegate` (lm-eval): an exception that `is_cell_failure` accepts, or
    one `raised_by_harness` (a bug of ours), propagates unchanged; anything else the delegate
    raised becomes the cell's failure `failure(exc)` (chained to it)."""
    try:
        yield
    except Exception as exc:
        if is_cell_failure(exc) or raised_by_harness(exc, delegate):
            raise
        raise failure(exc) from exc
