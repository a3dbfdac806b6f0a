"""One style for every experiment figure, saved as PNG (for the report) and PDF (for papers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence, Union

__all__ = ["STYLE", "subplots", "save", "save_table", "loglog_slope"]

#: matplotlib rc settings shared by every figure of the report
STYLE: Mapping[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 130,
    "font.size": 9.5,
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
}


def subplots(*args: Any, **kwargs: Any) -> Any:
    """``matplotlib.pyplot.subplots`` in the report's style (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(dict(STYLE)):  # type: ignore[arg-type]
        return plt.subplots(*args, **kwargs)


def save(fig: Any, out_dir: Path, stem: str) -> Dict[str, str]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` in ``out_dir`` and close it; the file names."""
    import matplotlib.pyplot as plt

    if not stem or "/" in stem or stem.startswith("."):
        raise ValueError(f"figure stem must be a plain file name without extension, got {stem!r}")
    with plt.rc_context(dict(STYLE)):  # type: ignore[arg-type]
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png")
        fig.savefig(out_dir / f"{stem}.pdf")
    plt.close(fig)
    return {"png": f"{stem}.png", "pdf": f"{stem}.pdf"}


def save_table(rows: Union[Sequence[Mapping[str, Any]], Any], out_dir: Path, name: str) -> str:
    """Write ``rows`` (dicts or a DataFrame) to ``out_dir/name`` as CSV (8 significant digits)."""
    import pandas as pd

    if not name.endswith(".csv") or "/" in name:
        raise ValueError(f"table name must be a plain file name ending in .csv, got {name!r}")
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame.to_csv(out_dir / name, index=False, float_format="%.8g")
    return name


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    import numpy as np

    lx, ly = np.log(np.asarray(list(x), float)), np.log(np.asarray(list(y), float))
    return float(np.polyfit(lx, ly, 1)[0])
