"""Progress inside one cell: tokens prefilled (or generated, or requests run) while the cell runs.

Contract: the runner gives every cell a `CellProgress` (`runner.Session.progress`) in one of three
modes, and the task advances it:
- `bar` (stderr is a terminal): a tqdm bar on the line under the runner's overall cells bar, redrawn
  as tqdm sees fit (at every update it is told of, at most every 0.1 s);
- `lines` (stderr is a log file): at most one plain line every `PLAIN_INTERVAL_S` seconds of the
  cell, no cursor escapes, e.g. `  cell 3/12: 40,960 / 65,536 tokens prefilled, 210 tok/s` (a cell
  shorter than the interval prints none; the runner prints its own line when the cell ends);
- `off` (`--no-progress`, or no runner): nothing at all, and `layers` registers no hook.
Counting never runs a forward or waits on the device: `layers` reads the shape of the hidden states
each decoder layer receives (metadata), so a chunked prefill advances chunk by chunk and a one-shot
forward layer by layer.
"""
from __future__ import annotations

import functools
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

MODES = ("bar", "lines", "off")
PLAIN_INTERVAL_S = 30.0  # `lines` mode: seconds between two in-cell lines (and before the first)


def decoder_layers(model) -> list:
    """The decoder layers of a model: its longest ModuleList (empty when it has none)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


@contextmanager
def other_bars_off(off: bool = True) -> Iterator[None]:
    """While inside (when `off`), a tqdm bar made without an explicit `disable` is disabled: the bars of
    other libraries that take no such option (lm-eval's request and sample-generation bars)
    write nothing to a log file or under `--no-progress`."""
    if not off:
        yield
        return
    original = std_tqdm.__init__
    std_tqdm.__init__ = functools.partialmethod(original, disable=True)
    try:
        yield
    finally:
        std_tqdm.__init__ = original


class CellProgress:
    """Progress of one quantity at a time (`stage`) inside one cell; `label` names the cell
    (`cell 3/12`). `interval` (seconds, `lines` mode) defaults to `PLAIN_INTERVAL_S` as it is when
    the progress is made; `clock` and `stream` are replaceable for tests."""

    def __init__(self, label: str = "", mode: str = "off", *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}.")
        self.label, self.mode, self.clock = label, mode, clock
        self.interval = PLAIN_INTERVAL_S if interval is None else float(interval)
        self.stream = stream
        self.verb, self.unit, self.count, self.total, self.detail = "", "tokens", 0, None, ""
        self._stage_start = self._last_line = clock() if mode != "off" else 0.0
        self._bar = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def bar(self):
        """The tqdm bar of `bar` mode once a stage has begun (None otherwise)."""
        return self._bar

    def stage(self, verb: str, total: int | None = None, unit: str = "tokens") -> None:
        """Start counting `unit` (`tokens`, `requests`) that are `verb` (`prefilled`, `generated`)
        from zero; `total`: how many the stage will count, when known."""
        if not self.enabled:
            return
        self.verb, self.unit, self.count, self.total, self.detail = verb, unit, 0, total, ""
        self._stage_start = self.clock()
        if self.mode == "bar":
            description = f"{self.label} {verb}".strip()
            if self._bar is None:
                self._bar = tqdm(total=total, unit=unit[:3], unit_scale=True, desc=description, position=1,
                                 leave=False, dynamic_ncols=True, file=self.stream)
            else:
                self._bar.reset(total=total)
                self._bar.set_description(description, refresh=False)

    def expect(self, n: int) -> None:
        """The current stage will count `n` more than its total said."""
        if not self.enabled:
            return
        self.total = (self.total or 0) + int(n)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        """`n` more counted; `detail`: a short note shown after the count (`4 / 10 requests`)."""
        if not self.enabled:
            return
        self.count += int(n)
        if detail is not None:
            self.detail = detail
        if self._bar is not None:
            if detail is not None:
                self._bar.set_postfix_str(detail, refresh=False)
            self._bar.update(int(n))
        elif self.mode == "lines":
            now = self.clock()
            if now - self._last_line >= self.interval:
                self._last_line = now
                print(self.line(now), file=self.stream or sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        """The plain line of `lines` mode: `  cell 3/12: 40,960 / 65,536 tokens prefilled, 210 tok/s`."""
        now = self.clock() if now is None else now
        of = f" / {self.total:,}" if self.total is not None else ""
        text = f"  {self.label}: {self.count:,}{of} {self.unit} {self.verb}"
        elapsed = now - self._stage_start
        if elapsed > 0 and self.count:
            text += f", {self.count / elapsed:,.0f} {self.unit[:3]}/s"
        return text + (f", {self.detail}" if self.detail else "")

    @contextmanager
    def layers(self, model) -> Iterator[None]:
        """Inside: every decoder layer that runs advances the count by its tokens ÷ the number of
        layers (whole numbers; a forward through every layer adds exactly its tokens), read from
        the shape of the hidden states it receives. `off`: no hook at all."""
        layers = decoder_layers(model) if self.enabled else []
        if not layers:
            yield
            return
        n, seen = len(layers), [0]

        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
                return
            before = seen[0] // n
            seen[0] += hidden.numel() // hidden.shape[-1]
            if seen[0] // n > before:
                self.advance(seen[0] // n - before)

        handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def close(self) -> None:
        """Remove the bar (a `lines` progress prints nothing more)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
