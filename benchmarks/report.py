"""Everything the run shows or writes: progress, tables, the JSON file and the plot.

rich and matplotlib are optional: without rich, progress and tables are plain text; without
matplotlib the plot is skipped with a note. Both tables come from the same rows. A run with
a case that measures memory (``MEMORY`` in its module: linear_xent) gets a ``peak mem``
column in both tables and a ``memory`` record per variant in the JSON; other runs' tables and
JSON are as they were.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

from .baselines import OURS
from .harness import TOLERANCE, CaseResult, Timing

try:
    import rich.console
    import rich.progress
    import rich.table
except ImportError:  # the GPU image may lack it
    rich = None


# ---- formatting -------------------------------------------------------------------------
def fmt_time(seconds: float | None) -> str:
    """``12.3 us``, ``4.56 ms`` or ``1.23 s``."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_bytes(n: int | None) -> str:
    """``512 B``, ``12.0 KiB``, ``258 MiB`` or ``1.25 GiB`` (negative: below the baseline)."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"
    return f"{n} B"


def fmt_shape(shape: tuple) -> str:
    """``4096x32768``; a 1-D power of two as ``2^24``."""
    if len(shape) == 1 and shape[0] > 1 and shape[0] & (shape[0] - 1) == 0:
        return f"2^{shape[0].bit_length() - 1}"
    return "x".join(str(d) for d in shape)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _status(case: CaseResult, name: str) -> str:
    """A speedup cell: ``3.1x``, or why there is none."""
    ratio = case.speedup(name)
    if ratio is not None:
        return f"{ratio:.2f}x"
    for o in case.outcomes:
        if o.variant == name:
            return {"mismatch": "WRONG", "error": "error"}.get(o.status, "-")
    return "-"


def _memory(c: CaseResult, name: str) -> str:
    """A ``peak mem`` cell: the variant's peak extra memory, ``-`` if not measured, or blank
    for a case that does not measure memory."""
    if not c.memory:
        return ""
    for o in c.outcomes:
        if o.variant == name and o.memory:
            return "error" if "error" in o.memory else fmt_bytes(o.memory["peak_extra_bytes"])
    return "-"


# ---- tables -----------------------------------------------------------------------------
DETAIL_HEAD = ["op", "shape", "dtype", "variant", "median", "IQR", "GB/s", "% copy", "ours x"]
MEMORY_HEAD = "peak mem"


def _with_memory(cases: list[CaseResult]) -> bool:
    return any(c.memory for c in cases)


def detail_head(cases: list[CaseResult]) -> list[str]:
    """``DETAIL_HEAD``, and ``peak mem`` when a case measured memory."""
    return DETAIL_HEAD + [MEMORY_HEAD] * _with_memory(cases)


def detail_rows(cases: list[CaseResult]) -> list[list[str]]:
    """One row per variant per case (and one for the copy), with failures spelled out."""
    rows = []
    mem = _with_memory(cases)
    for c in cases:
        head = [c.op, fmt_shape(c.shape), c.dtype]
        if c.copy:
            copy = [fmt_time(c.copy.median), _num(100 * c.copy.spread, ".0f") + "%"]
            rows.append(
                head
                + ["memcpy (same bytes)", *copy, _num(c.copy_gbps, ".1f"), "100", ""]
                + [""] * mem
            )
        for o in c.outcomes:
            t = o.timing
            if t is None:
                rows.append(head + [o.variant, o.status, o.detail, "", "", ""] + [""] * mem)
                continue
            ratio = "" if o.variant == OURS else _status(c, o.variant)
            rows.append(
                head
                + [o.variant, fmt_time(t.median), _num(100 * t.spread, ".0f") + "%"]
                + [_num(c.gbps(t), ".1f"), _num(c.pct_of_copy(t), ".0f"), ratio]
                + [_memory(c, o.variant)] * mem
            )
    return rows


def summary(cases: list[CaseResult]) -> tuple[list[str], list[list[str]]]:
    """One row per case: gpukernels' median, GB/s and % of copy, then its speedup over each
    baseline (that baseline's median over ours)."""
    others = []
    for c in cases:
        for o in c.outcomes:
            if not o.variant.startswith(OURS) and o.variant not in others:
                others.append(o.variant)
    mem = _with_memory(cases)
    head = ["op", "shape", "dtype", OURS, "GB/s", "% copy"] + [MEMORY_HEAD] * mem
    head += [f"vs {n}" for n in others]
    rows = []
    for c in cases:
        t = c.timed(OURS)
        if t is None:
            ours = [_status(c, OURS), "-", "-"]
        else:
            ours = [fmt_time(t.median), _num(c.gbps(t), ".1f"), _num(c.pct_of_copy(t), ".0f")]
        ours += [_memory(c, OURS)] * mem
        rows.append([c.op, fmt_shape(c.shape), c.dtype, *ours] + [_status(c, n) for n in others])
    return head, rows


def print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal-wide console, or aligned plain text."""
    if rich is not None:
        console = rich.console.Console()
        if not console.is_terminal:
            console = rich.console.Console(width=200)
        table = rich.table.Table(title=title, title_justify="left")
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i < 4 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    for row in [head, ["-" * w for w in widths], *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in pairs]
        print("  ".join(cells).rstrip())
    sys.stdout.flush()


# ---- progress ---------------------------------------------------------------------------
class Progress:
    """A rich progress bar on a terminal; elsewhere one plain line per timed variant."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.bar = None
        if rich is not None and rich.console.Console().is_terminal:
            self.bar = rich.progress.Progress(
                rich.progress.TextColumn("{task.description}"),
                rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(),
                rich.progress.TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("starting", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def case(self, label: str) -> None:
        """Name the case now being checked and timed."""
        self.label = label
        if self.bar is not None:
            self.bar.update(self.task, description=label)

    def step(self, outcome) -> None:
        """One variant done."""
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
            return
        t = outcome.timing
        what = fmt_time(t.median) if t else f"{outcome.status} {outcome.detail}".strip()
        print(f"[{self.done:3d}/{self.total}] {self.label} {outcome.variant}: {what}", flush=True)


# ---- files ------------------------------------------------------------------------------
def _timing(t: Timing | None) -> dict:
    if t is None:
        return {}
    return {
        "median_s": t.median,
        "q1_s": t.q1,
        "q3_s": t.q3,
        "min_s": t.min,
        "max_s": t.max,
        "reps": t.reps,
    }


def case_record(c: CaseResult, op) -> dict:
    """A case as the results file stores it."""
    variants = []
    for o in c.outcomes:
        rec = {
            "name": o.variant,
            "status": o.status,
            "detail": o.detail,
            "loss_rel_err": o.loss_err,
            "grad_rel_err": o.grad_err,
            **_timing(o.timing),
        }
        if o.timing is not None:
            rec |= {
                "gbps": c.gbps(o.timing),
                "pct_of_copy": c.pct_of_copy(o.timing),
                "median_over_gpukernels": c.speedup(o.variant),
            }
        if o.memory is not None:
            rec["memory"] = o.memory
        variants.append(rec)
    return {
        "op": c.op,
        "title": op.TITLE,
        "byte_model": op.BYTES,
        "shape": list(c.shape),
        "dtype": c.dtype,
        "bytes": c.nbytes,
        "clock": "host" if c.host_clock else "device",
        "input_sets": c.n_sets,
        "tolerance": TOLERANCE[c.dtype],
        "copy": {**_timing(c.copy), "bytes": c.copy_bytes, "gbps": c.copy_gbps},
        "variants": variants,
    }


def write_json(path: Path, meta: dict, records: list[dict]) -> None:
    """The run's metadata and every case."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "cases": records}, indent=1) + "\n")


def plot(path: Path, cases: list[CaseResult], titles: dict, heading: str) -> str:
    """GB/s per op against the copy ceiling; returns a note if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    ops = [op for op in dict.fromkeys(c.op for c in cases) if not cases_of(cases, op)[0].host_clock]
    if not ops:
        return "nothing to plot"
    cols = min(3, len(ops))
    rows = -(-len(ops) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    styles = {"float32": ("o", "-"), "float16": ("s", "--"), "float64": ("^", ":")}
    colors = {}
    for ax, op in zip(axes.flat, ops, strict=False):
        _plot_op(ax, cases_of(cases, op), styles, colors)
        ax.set_title(textwrap.fill(titles.get(op, op), 48), fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes moved (byte model)")
        ax.set_ylabel("GB/s")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the shape labels
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    # One legend entry per variant (colour) and, with several dtypes, one per dtype (marker).
    handles = [Line2D([], [], color="black", linewidth=2, label="memcpy, same bytes")]
    handles += [Line2D([], [], color=c, label=name) for name, c in colors.items()]
    dtypes = list(dict.fromkeys(c.dtype for c in cases if not c.host_clock))
    if len(dtypes) > 1:
        for d in dtypes:
            marker, line = styles.get(d, ("x", "-."))
            handles.append(Line2D([], [], color="gray", marker=marker, linestyle=line, label=d))
    ncol = min(7, len(handles))
    legend_rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    fig.suptitle(heading)
    bottom = (0.15 + 0.25 * legend_rows) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


def cases_of(cases: list[CaseResult], op: str) -> list[CaseResult]:
    """The cases of one op, smallest first."""
    return sorted((c for c in cases if c.op == op), key=lambda c: c.nbytes)


def _plot_op(ax, cases: list[CaseResult], styles: dict, colors: dict) -> None:
    cycle = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    for dtype in dict.fromkeys(c.dtype for c in cases):
        marker, line = styles.get(dtype, ("x", "-."))
        these = [c for c in cases if c.dtype == dtype and c.copy]
        suffix = f" {dtype}" if len({c.dtype for c in cases}) > 1 else ""
        ax.plot(
            [c.nbytes for c in these],
            [c.copy_gbps for c in these],
            color="black",
            marker=marker,
            linestyle=line,
            linewidth=2,
            label=f"memcpy ceiling{suffix}",
        )
        for c in these:
            ax.annotate(
                fmt_shape(c.shape),
                (c.nbytes, c.copy_gbps),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
        names = dict.fromkeys(o.variant for c in these for o in c.outcomes if o.timing)
        for name in names:
            color = colors.setdefault(name, cycle[len(colors) % len(cycle)])
            pts = [(c.nbytes, c.gbps(c.timed(name))) for c in these if c.timed(name)]
            ax.plot(
                *zip(*pts, strict=True),
                color=color,
                marker=marker,
                linestyle=line,
                label=name + suffix,
            )
