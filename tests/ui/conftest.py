"""Fixtures every editor-window test shares: user folders kept inside the test, and a tiny model."""
import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """The model cache and the autosave folder live in the test's own folder (a module may extend this)."""
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFEDITOR_AUTOSAVE", str(tmp_path / "autosave"))


@pytest.fixture(scope="module")
def tiny_bundle():
    """A 16 px random generator with a random hierarchy over the four-leaf test tree."""
    from editor_core_helpers import tiny_generator, tiny_hierarchy
    from sfeditor.editor.session import ModelBundle

    G = tiny_generator()
    return ModelBundle("tiny", G, hierarchy=tiny_hierarchy(G), truncation=0.7)
