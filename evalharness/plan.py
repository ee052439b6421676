"""The run plan: the list of evaluation cells a command asks for, before anything is computed.

A `Cell` is one unit of work of one task under one scaling spec, with a stable `name` (the key of
its entry in manifest.json):

    TASK|MODEL|SPEC|UNIT...     the task's name, the model, the scaling spec, the task's unit of work

(each task's unit: ARCHITECTURE.md, "Tasks and cells").
`tokens` is the number of tokens the cell's forward passes process (0 when the task cannot know,
as for lm-eval tasks), `length` its longest forward (what sets peak memory), `kv_cache`
whether that forward keeps a KV cache and `chunkable` whether `--prefill-chunk` applies to it.
`describe` renders a plan for `--dry-run`.
No torch import here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Cell:
    task: str
    spec: Any  # methods.ScalingSpec, resolved (original_ctx set)
    unit: tuple  # the task's unit of work, e.g. (doc_id, protocol) or (length, depth, trial)
    name: str
    tokens: int = 0
    length: int = 0
    kv_cache: bool = False
    chunkable: bool = False


@dataclass
class Plan:
    cells: list[Cell]

    def __len__(self) -> int:
        return len(self.cells)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(cell.task for cell in self.cells))


def cell_name(*parts: Any) -> str:
    return "|".join(str(part) for part in parts)


def _gib(n_bytes: float | None) -> str:
    return "?" if n_bytes is None else f"{n_bytes / 2**30:.2f} GiB"


def describe(status: Sequence[tuple[Cell, Any]], memory: Callable[[Cell], float | None] | None = None,
             world: int = 1, prefill: Callable[[Cell], str] | None = None) -> str:
    """The dry-run text: one line per cell (done / to do, tokens, peak memory estimate, and with
    `prefill` the forward's plan: `one-shot` or `chunk C`), then per task and overall totals.
    `status` pairs each cell with what is still pending (falsy = done); `memory(cell)` estimates
    the cell's peak bytes (None: unknown)."""
    lines = [f"{'state':<6} {'tokens':>12} {'peak mem':>11}  " + (f"{'prefill':<11}  " if prefill else "") + "cell"]
    totals: dict[str, list[int]] = {}
    for cell, pending in status:
        todo = bool(pending)
        peak = memory(cell) if memory else None
        plan = f"{prefill(cell):<11}  " if prefill else ""
        lines.append(f"{'to do' if todo else 'done':<6} {cell.tokens if cell.tokens else '?':>12} "
                     f"{_gib(peak):>11}  {plan}{cell.name}")
        total = totals.setdefault(cell.task, [0, 0, 0, 0])
        total[0] += 1
        total[1] += todo
        total[2] += cell.tokens if todo else 0
        total[3] += todo and not cell.tokens  # a cell whose size only its library knows (e.g. lm-eval)
    lines.append("")
    for task, (n, todo, tokens, unknown) in totals.items():
        size = (f"{tokens:,} tokens to process" if not unknown else
                "tokens unknown until the task builds its requests" if unknown == todo else
                f"{tokens:,} tokens to process + {unknown} cells of unknown size")
        lines.append(f"{task}: {n} cells, {n - todo} done, {todo} to do, {size}")
    n_cells = sum(t[0] for t in totals.values())
    n_todo = sum(t[1] for t in totals.values())
    text = f"plan: {n_cells} cells, {n_cells - n_todo} done, {n_todo} to do"
    if world > 1:
        text += f" (split over {world} processes)"
    lines.append(text + "; nothing computed (--dry-run).")
    return "\n".join(lines)
