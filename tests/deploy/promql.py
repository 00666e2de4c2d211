"""Just enough PromQL reading for the deploy tests: which metric names an expression uses."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

# Series Prometheus makes itself for every target; the daemon cannot export them.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana ``$variables`` allowed in matchers and ranges).

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x=~"$i"}[5m])) / on (j) b_total > bool 0.5e3 and up'))
    ['a_bucket', 'b_total', 'up']
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _CLAUSE.sub(" ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function call or an operator
        names.add(m.group(0))
    return names


def exported(text: str) -> dict[str, set[str]]:
    """Family name -> sample names of a ``/metrics`` exposition (``_created`` left out)."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = {s.name for s in family.samples if not s.name.endswith("_created")}
        if names or not family.name.endswith("_created"):  # the text format lists _created as a family
            out[family.name] = names or {family.name}
    return out


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every query in a Grafana dashboard, rows included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.match(r"label_values\((\w+)", query or "")
        if m:
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def alert_exprs(rules: dict) -> list[tuple[str, str]]:
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in rules["groups"] for r in g["rules"]]


# Families exported only by some learners: the seed learners' own health metrics have no
# series under the default learner the live stack runs (the family is registered, empty).
LEARNER_SPECIFIC = frozenset({"stream_meta_learner_health"})


def scaleout_families() -> dict[str, set[str]]:
    """Family -> sample names of the scale-out metrics, from the real SyncMetrics: they exist only
    on a member of a group (WORLD_SIZE > 1), so a lone daemon's scrape has none of them."""
    from prometheus_client import CollectorRegistry, generate_latest

    from stream_meta.daemon.sync_config import SyncMetrics

    registry = CollectorRegistry()
    SyncMetrics(registry)
    return exported(generate_latest(registry).decode())


SCALEOUT = frozenset(n for samples in scaleout_families().values() for n in samples)
