"""Every notebook in notebooks/ runs top to bottom without error and without a warning of its own."""
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# a printed warning: "<file>:<line>: <Category>Warning: <message>"
WARNING_LINE = re.compile(r"^(?P<file>.+?):\d+: (?P<category>\w*Warning): ", re.MULTILINE)


def _warnings(nb):
    """Warnings printed on the cells' stderr, except those raised inside installed third-party
    packages (environment notices such as tqdm's "IProgress not found" without ipywidgets)."""
    found = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                found += [m.group(0) for m in WARNING_LINE.finditer(o.get("text", ""))
                          if "site-packages" not in m.group("file")]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert not _warnings(nb)
