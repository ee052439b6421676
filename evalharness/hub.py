"""The Hugging Face Hub as evalharness sees it: whether to work offline, where evalharness caches
its own files, and whether an exception means "not available offline".

Contract:
- `offline_requested()` is the one offline rule (the `datasets` library's own, evaluated now rather
  than at import time): `HF_DATASETS_OFFLINE`, when set, decides; otherwise `HF_HUB_OFFLINE` in the
  environment or `huggingface_hub.constants.HF_HUB_OFFLINE` (which also reads
  `TRANSFORMERS_OFFLINE` when huggingface_hub is imported).
- `hub_reachable()` is the one reachability probe: a TCP connect to `HF_ENDPOINT`, done at most once
  per process; behind an HTTPS proxy the hub is assumed reachable.
- `forced_offline()` switches `datasets` and `huggingface_hub` to offline mode for a block (they read
  the environment at import time only), so a missing dataset fails in a second instead of after
  their retries.
- `unavailable_reason(exc)` classifies a failure by the exception classes that huggingface_hub,
  datasets and Python raise, anywhere in the exception's cause/context chain; `datasets`' refusal of
  script-based datasets (a plain RuntimeError) is recognised by its message.
- `default_cache_dir()` is evalharness's own cache (converted GGUF models, tokenized corpora).
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator

from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT_S = 3.0

NOT_FOUND = "not found"  # the repository or dataset id does not exist, or is private or gated
OFFLINE = "offline"  # not in the local cache, and the hub is switched off or cannot be reached
HUB_ERROR = "hub error"  # another HTTP error answered by the hub (server error, rate limit, ...)
SCRIPT_DATASET = "script dataset"  # a dataset defined by a loading script, which datasets >= 4 refuses to run

# The start of the RuntimeError that `datasets` >= 4 raises for a dataset defined by a `<name>.py`
# loading script ("Dataset scripts are no longer supported, but found <name>.py"); it has no class.
_SCRIPT_REFUSAL = "Dataset scripts are no longer supported"


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in TRUE_VALUES


def offline_requested() -> bool:
    """Whether the user asked for offline mode (the rule of `datasets.config`, read now)."""
    datasets_flag = os.environ.get("HF_DATASETS_OFFLINE")
    if datasets_flag is not None:
        return _is_true(datasets_flag)
    return _is_true(os.environ.get("HF_HUB_OFFLINE")) or bool(hub_constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub endpoint be opened? Probed once per process; True behind a
    proxy (the proxy decides)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def work_offline() -> bool:
    """Offline mode requested, or the hub cannot be reached."""
    return offline_requested() or not hub_reachable()


@contextlib.contextmanager
def forced_offline(active: bool = True) -> Iterator[None]:
    """Within the block, `datasets` and `huggingface_hub` run in offline mode (when `active`); their
    flags are restored afterwards."""
    if not active:
        yield
        return
    import datasets.config as datasets_config  # lazy: ≈ 1.3 s; only where a data set is read

    saved = (datasets_config.HF_HUB_OFFLINE, datasets_config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets_config.HF_HUB_OFFLINE, datasets_config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and its causes/contexts, outermost first (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# Transport-error classes of the HTTP clients huggingface_hub has used (httpx2 in 2.x, httpx in 1.x,
# requests before): looked up only when their module is already imported, since an exception of a
# class whose module was never imported cannot exist.
_CLIENT_NETWORK_ERRORS = (("httpx2", "TransportError"), ("httpx", "TransportError"),
                          ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout"))


def _imported_classes(pairs) -> tuple[type, ...]:
    found = []
    for module_name, class_name in pairs:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a hub model or dataset could not be had: `NOT_FOUND`, `OFFLINE`, `HUB_ERROR`,
    `SCRIPT_DATASET`, or None when the failure is something else.

    By class, anywhere in the chain: huggingface_hub's `RepositoryNotFoundError` (and its
    `GatedRepoError`) and datasets' `DatasetNotFoundError` → not found; huggingface_hub's
    `OfflineModeIsEnabled` and `LocalEntryNotFoundError`, Python's `ConnectionError` (datasets
    raises it for "Couldn't reach ... on the Hub") and `TimeoutError`, and the HTTP client's
    transport errors → offline; any other `HfHubHTTPError` → hub error; a `RuntimeError` whose
    message starts "Dataset scripts are no longer supported" (what `datasets` >= 4 raises for a
    dataset defined by a loading script, `datasets/load.py`) → script dataset. Not found wins, then
    script dataset (a cached script dataset is refused offline too).
    """
    not_found = (RepositoryNotFoundError, *_imported_classes([("datasets.exceptions", "DatasetNotFoundError")]))
    offline = (LocalEntryNotFoundError, ConnectionError, TimeoutError, *_imported_classes(_CLIENT_NETWORK_ERRORS))
    chain = list(exception_chain(exc))
    if any(isinstance(e, not_found) for e in chain):
        return NOT_FOUND
    if any(isinstance(e, RuntimeError) and str(e).startswith(_SCRIPT_REFUSAL) for e in chain):
        return SCRIPT_DATASET
    if any(isinstance(e, offline) for e in chain):
        return OFFLINE  # OfflineModeIsEnabled is a ConnectionError
    if any(isinstance(e, HfHubHTTPError) for e in chain):
        return HUB_ERROR
    return None


def default_cache_dir() -> Path:
    """`$EVALHARNESS_CACHE`, else `$XDG_CACHE_HOME/evalharness`, else `~/.cache/evalharness` (not
    created here)."""
    if os.environ.get("EVALHARNESS_CACHE"):
        return Path(os.environ["EVALHARNESS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "evalharness"
    return Path.home() / ".cache" / "evalharness"
