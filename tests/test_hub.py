"""evalharness.hub: the offline rule, the reachability probe, forced offline mode, and the
classification of real huggingface_hub / datasets / transformers failures."""
import socket

import pytest

from evalharness import hub


@pytest.fixture
def hub_flag(monkeypatch):
    """Set huggingface_hub's import-time flag for one test."""
    from huggingface_hub import constants

    def set_flag(value):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", value)

    return set_flag


def test_offline_rule_is_datasets_precedence(monkeypatch, hub_flag):
    hub_flag(False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets' own flag, when set, decides
    assert hub.offline_requested() is False
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    assert hub.offline_requested() is True  # then HF_HUB_OFFLINE, read now
    monkeypatch.setenv("HF_HUB_OFFLINE", "no")
    assert hub.offline_requested() is False
    hub_flag(True)  # e.g. TRANSFORMERS_OFFLINE=1 when huggingface_hub was imported
    assert hub.offline_requested() is True
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "yes")
    hub_flag(False)
    assert hub.offline_requested() is True


def test_reachability_probe_connects_to_the_endpoint(monkeypatch):
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hub.hub_reachable.cache_clear()
        assert hub.hub_reachable(timeout=2.0) is True
    hub.hub_reachable.cache_clear()
    assert hub.hub_reachable(timeout=2.0) is False  # the port is closed now
    assert hub.hub_reachable(timeout=2.0) is False  # cached: one probe per process
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    hub.hub_reachable.cache_clear()
    assert hub.hub_reachable() is True  # behind a proxy the proxy decides
    hub.hub_reachable.cache_clear()


def test_forced_offline_sets_and_restores_the_library_flags(monkeypatch, hub_flag):
    import datasets.config
    from huggingface_hub import constants

    hub_flag(False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    with pytest.raises(RuntimeError):
        with hub.forced_offline():
            assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE and datasets.config.HF_DATASETS_OFFLINE
            raise RuntimeError("the block fails")
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE) == (
        False, False, False)
    with hub.forced_offline(False):
        assert constants.HF_HUB_OFFLINE is False


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever the library raised
        return exc
    raise AssertionError("expected the call to fail")


def test_real_offline_failures_are_classified_offline(monkeypatch, hub_flag):
    """What datasets and transformers really raise for an id that is not cached, hub switched off."""
    import datasets
    from transformers import AutoConfig

    hub_flag(True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    dataset_error = _raised(lambda: datasets.load_dataset("nobody/no-such-dataset-evalharness", split="test"))
    model_error = _raised(lambda: AutoConfig.from_pretrained("nobody/no-such-model-evalharness"))
    assert hub.unavailable_reason(dataset_error) == hub.OFFLINE
    assert hub.unavailable_reason(model_error) == hub.OFFLINE
    assert hub.unavailable_reason(ValueError("bad split")) is None


def _bare(cls, message):
    """An instance of a hub HTTP error class without the HTTP response its constructor reads."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def test_classes_decide_not_names():
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    assert hub.unavailable_reason(DatasetNotFoundError("Dataset 'x/y' doesn't exist on the Hub")) == hub.NOT_FOUND
    assert hub.unavailable_reason(_bare(RepositoryNotFoundError, "404 x/y")) == hub.NOT_FOUND
    assert hub.unavailable_reason(_bare(HfHubHTTPError, "503 Service Unavailable")) == hub.HUB_ERROR
    try:  # a wrapper raised while handling the hub's error: the chain is searched
        try:
            raise OfflineModeIsEnabled("offline")
        except OfflineModeIsEnabled as inner:
            raise RuntimeError("lm-eval could not build the task") from inner
    except RuntimeError as outer:
        assert hub.unavailable_reason(outer) == hub.OFFLINE

    class OfflineModeIsEnabledLookalike(Exception):  # same name, unrelated class: not classified
        pass

    OfflineModeIsEnabledLookalike.__name__ = "OfflineModeIsEnabled"
    assert hub.unavailable_reason(OfflineModeIsEnabledLookalike("x")) is None
