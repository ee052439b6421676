"""Hub datasets that are not available offline: detection, offline mode for the lm-eval call, and the
one sentence that tells the user how to get the dataset (or run its offline mirror)."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import socket

from .mirrors import LOCAL_MIRROR_OF, MIRRORS
from .planning import TaskPlan, _builtin_task_manager


def _env_offline() -> bool:
    true = {"1", "ON", "YES", "TRUE"}
    return any(os.environ.get(v, "").upper() in true for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the Hugging Face endpoint be opened (once per process)?"""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_mode(active: bool):
    """Switch datasets/huggingface_hub to offline mode (they read the environment only at import
    time, so setting HF_DATASETS_OFFLINE later has no effect) and restore the flags afterwards."""
    if not active:
        yield
        return
    import datasets.config as dconfig
    import huggingface_hub.constants as hconstants

    saved = (dconfig.HF_HUB_OFFLINE, getattr(dconfig, "HF_DATASETS_OFFLINE", None), hconstants.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = True
    if hasattr(dconfig, "HF_DATASETS_OFFLINE"):
        dconfig.HF_DATASETS_OFFLINE = True
    hconstants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE = saved[0]
        if saved[1] is not None:
            dconfig.HF_DATASETS_OFFLINE = saved[1]
        hconstants.HF_HUB_OFFLINE = saved[2]


def _dataset_unavailable(exc: BaseException) -> bool:
    """Is this the datasets/hub error of a dataset that is neither cached nor downloadable?"""
    names = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError", "HfHubHTTPError",
             "RepositoryNotFoundError"}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if type(exc).__name__ in names or isinstance(exc, ConnectionError) or (
            isinstance(exc, FileNotFoundError) and ("is not cached" in text or "on the Hub" in text)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _hub_dataset_of(plan: TaskPlan, exc: BaseException) -> str:
    """`'path'` or `'path' (config)` of the dataset a hub task needed."""
    entry = None
    try:
        entry = _builtin_task_manager().task_index.get(plan.name)
    except Exception:  # noqa: BLE001
        pass
    cfg = (entry.cfg or {}) if entry is not None else {}
    path = cfg.get("dataset_path")
    if not path:
        match = re.search(r"'([\w.\-]+/[\w.\-]+)'", str(exc))
        path = match.group(1) if match else None
    if not path:
        return "its dataset"
    name = cfg.get("dataset_name")
    return f"'{path}'" + (f" ({name})" if name else "")


def offline_message(plan: TaskPlan, exc: BaseException, offline: bool) -> str:
    """One sentence: which dataset is missing and the two ways to get it."""
    dataset = _hub_dataset_of(plan, exc)
    mirror = LOCAL_MIRROR_OF.get(plan.name)
    local = (f"or give --leaderboard-data DIR with a local copy in DIR/{MIRRORS[mirror].data_subdir}/ to run the "
             f"offline mirror {mirror} (tasks/README.md)" if mirror else
             "or run a task YAML that reads a local copy (dataset_path: json with data_files, tasks/README.md)")
    if offline:
        return (f"{plan.name}: dataset {dataset} is not in the local Hugging Face cache and the Hub is offline or "
                f"unreachable, so download it once with network access (any online run of this task fills the "
                f"cache) {local}.")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{plan.name}: dataset {dataset} could not be loaded from the Hub ({type(exc).__name__}: {first}); {local}."

