"""Result containers and the two statistics the table reports (median, p99)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); with few samples p99 ~ max."""
    xs = sorted(samples)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Cell:
    """One kernel's figure for one measurement: validated samples or a reason why not."""

    samples: list[float] = field(default_factory=list)
    note: str | None = None  # set => figure is n/a, note says why
    single: bool = False  # a one-off reading (e.g. RSS): no p99

    @property
    def ok(self) -> bool:
        return self.note is None and bool(self.samples)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.ok else None

    @property
    def p99(self) -> float | None:
        return percentile(self.samples, 99) if self.ok and not self.single else None


@dataclass
class Row:
    """One table line. ``scale`` converts stored samples (SI units) to ``unit``."""

    name: str
    unit: str
    cells: dict[str, Cell]
    target: str = ""
    scale: float = 1.0
    higher_is_better: bool = False


def interleave(
    labels: list[str], n: int, fn, cells: dict[str, Cell] | None = None, single: bool = False
) -> dict[str, Cell]:
    """Run ``fn(label, i) -> float`` n times per label, alternating A B A B ...

    Interleaving spreads machine noise (thermal, other load) evenly over the
    kernels instead of letting it land on whichever ran second.  A kernel
    whose run raises BenchError is dropped from later rounds and its cell
    becomes n/a with the error as the note (other exceptions too: the
    subject may be a kernel under development); partial samples are discarded so
    a figure is never reported from an incomplete, unvalidated run.
    """
    from .harness import BenchError

    cells = cells if cells is not None else {lb: Cell(single=single) for lb in labels}
    for i in range(n):
        for lb in labels:
            c = cells[lb]
            if c.note is not None:
                continue
            try:
                c.samples.append(fn(lb, i))
            except BenchError as e:
                c.note = str(e)
                c.samples.clear()
            except Exception as e:  # noqa: BLE001 - a kernel under test may fail oddly
                c.note = f"{type(e).__name__}: {e}"
                c.samples.clear()
    return cells
