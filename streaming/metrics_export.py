"""A small writer for the Prometheus text exposition format (version 0.0.4).

The format wants every sample of a metric family in one group right after its
``# HELP`` and ``# TYPE`` lines, so samples are buffered per family and written
in declaration order by ``render()``. No dependency on prometheus_client: the
server's numbers live in the sessions, and this only formats them.

Usage::

    out = PromText()
    out.declare("framecast_fps", "gauge", "Frames per second, all sessions.")
    out.sample("framecast_fps", 31.5)
    out.declare("framecast_frame_interval_seconds", "summary", "Intervals between frames.")
    out.summary("framecast_frame_interval_seconds", recent, {"session": "ab12"}, count=n, total=s)
    text = out.render()      # serve as CONTENT_TYPE
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MetricType = Literal["counter", "gauge", "summary", "histogram", "untyped"]
QUANTILES = (0.5, 0.9, 0.99)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SUFFIXES = ("_sum", "_count", "_bucket")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class PromText:
    def __init__(self) -> None:
        self._families: dict[str, tuple[MetricType, str, list[str]]] = {}

    def declare(self, name: str, kind: MetricType, help_text: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if name not in self._families:
            self._families[name] = (kind, help_text, [])

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """One sample; ``name`` is a declared family or its _sum/_count/_bucket series."""
        family = self._family_of(name)
        text = name
        if labels:
            for key in labels:
                if not _LABEL.match(key):
                    raise ValueError(f"invalid label name {key!r}")
            text += "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"
        self._families[family][2].append(f"{text} {format_value(float(value))}")

    def summary(
        self,
        name: str,
        recent: Iterable[float],
        labels: Mapping[str, str] | None = None,
        *,
        count: int,
        total: float,
    ) -> None:
        """Quantiles of the recent values, plus the all-time ``_count`` and ``_sum``."""
        values = np.fromiter(recent, dtype=np.float64)
        base = dict(labels or {})
        if len(values):
            for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
                self.sample(name, float(v), {**base, "quantile": str(q)})
        self.sample(f"{name}_sum", total, base)
        self.sample(f"{name}_count", count, base)

    def _family_of(self, name: str) -> str:
        if name in self._families:
            return name
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in self._families:
                return name[: -len(suffix)]
        raise KeyError(f"metric {name!r} was not declared")

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"
