"""Timing helpers of the benchmarks: interleaved repeats, and the machine and load lines of a report."""

import time
from collections.abc import Callable, Hashable, Mapping

from benchmarks.http_predict import load_average, machine


def interleaved(calls: Mapping[Hashable, Callable[[], object]], repeats: int) -> dict[Hashable, list[float]]:
    """Seconds of each call, `repeats` times, the calls taking turns: a change in the machine's load
    during the run then affects every option alike."""
    seconds: dict[Hashable, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[key].append(time.perf_counter() - started)
    return seconds


def report_header(load_at_start: str) -> list[str]:
    """The machine, the packages and the load average at the start and now, as Markdown list items."""
    return [*machine(), f"- load average (1/5/15 min) at start {load_at_start}, at end {load_average()}"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
