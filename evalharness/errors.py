"""The two kinds of failure the harness distinguishes, and nothing else.

- `EvalHarnessError`: bad input or an unmet precondition the user can fix (an unknown method, a
  missing file, a dataset that is not available offline). Every user-facing error class derives
  from it; the CLI catches this one class and prints its message as one sentence (exit code 2).
- `CellFailure`: the computation of one evaluation cell failed (out of memory, a non-finite
  result, an lm-eval task that raised). The runner records the cell as failed in the manifest and
  goes on with the next cell (`is_cell_failure` says which exceptions count).

Any other exception is a bug and propagates unchanged.

No torch import at module level: the CLI imports this before anything heavy.
"""
from __future__ import annotations


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
        import torch

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
