"""The runnable code in the docs runs (blocks that start with an import)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def runnable_blocks(path: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if b.lstrip().startswith(("from ", "import "))]


@pytest.fixture
def restored_registries():
    """Pages register their own components; the other tests must not see them."""
    import murmura
    from murmura.topology import MIXING

    registries = [murmura.ALGORITHMS, murmura.DATASETS, murmura.MODELS, murmura.PARTITIONERS,
                  murmura.TOPOLOGIES, MIXING, murmura.AGGREGATORS, murmura.ATTACKS,
                  murmura.COMPRESSORS, murmura.TASKS, murmura.KINDS]
    saved = [dict(r._entries) for r in registries]
    yield
    for registry, entries in zip(registries, saved):
        registry._entries.clear()
        registry._entries.update(entries)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_doc_examples_run(path, tmp_path, monkeypatch, restored_registries):
    monkeypatch.chdir(tmp_path)  # examples may write files
    blocks = runnable_blocks(path)
    assert blocks, f"{path.name} has no runnable example"
    for block in blocks:
        exec(compile(block, str(path), "exec"), {"__name__": f"doc_{path.stem}"})


def test_package_doctests(restored_registries):
    import doctest
    import importlib
    import pkgutil

    import murmura

    failed = 0
    for info in pkgutil.walk_packages(murmura.__path__, "murmura."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        failed += doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed
    assert failed == 0
