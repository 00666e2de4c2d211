"""``stream-meta status``: a one-screen summary of a running daemon, read from its ``/metrics``.

>>> text = '''stream_meta_records_consumed_total 10.0
... stream_meta_records_learned_total 9.0
... stream_meta_prequential_accuracy 0.5
... '''
>>> s = summarize(parse(text))
>>> s["records"]["consumed"], s["accuracy"]["window"]
(10.0, 0.5)
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from stream_meta.errors import StreamMetaError

Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value)


def metrics_url(url: str) -> str:
    """``HOST:PORT``, a base URL or a full ``/metrics`` URL -> the ``/metrics`` URL."""
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else url + "/metrics"


def fetch(url: str, timeout_s: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as reply:
            return reply.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        raise StreamMetaError(f"cannot read metrics from {metrics_url(url)}: {exc}") from None


def parse(text: str) -> Samples:
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return dict(out)


def _one(samples: Samples, name: str, default: float | None = None) -> float | None:
    values = [v for _, v in samples.get(name, [])]
    return sum(values) if values else default


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): v for labels, v in samples.get(name, [])}


def _quantile(samples: Samples, name: str, q: float) -> float | None:
    """``histogram_quantile`` over a histogram's cumulative buckets (linear within a bucket)."""
    buckets = sorted((float(labels["le"]), v) for labels, v in samples.get(f"{name}_bucket", []))
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return None


def _latency(samples: Samples, name: str) -> dict:
    count = _one(samples, f"{name}_count", 0.0)
    total = _one(samples, f"{name}_sum", 0.0)
    return {
        "count": count,
        "mean": total / count if count else None,
        "p50": _quantile(samples, name, 0.5),
        "p99": _quantile(samples, name, 0.99),
    }


def summarize(samples: Samples) -> dict:
    """The numbers ``status`` shows, as plain data (also printed by ``--json``)."""
    ns = "stream_meta_"
    build = samples.get(f"{ns}build_info", [({}, 0.0)])[0][0]
    rejected = {k: v for k, v in _by(samples, f"{ns}records_rejected_total", "reason").items() if v}
    tasks = _by(samples, f"{ns}task_prequential_accuracy", "task")
    sizes = _by(samples, f"{ns}task_scored_records", "task")
    start = _one(samples, "process_start_time_seconds")
    return {
        "build": build,
        "ready": _one(samples, f"{ns}ready") == 1,
        "records": {
            "consumed": _one(samples, f"{ns}records_consumed_total", 0.0),
            "learned": _one(samples, f"{ns}records_learned_total", 0.0),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "predictions": _one(samples, f"{ns}predictions_total", 0.0),
            "per_second": _one(samples, f"{ns}records_per_second"),
        },
        "lag": {
            "total": _one(samples, f"{ns}consumer_lag_records"),
            "by_partition": _by(samples, f"{ns}consumer_partition_lag_records", "partition"),
        },
        "accuracy": {
            "window": _one(samples, f"{ns}prequential_accuracy"),
            "by_task_position": _by(samples, f"{ns}accuracy_by_task_position", "position"),
            "by_task": {t: {"accuracy": a, "records": sizes.get(t, 0.0)} for t, a in tasks.items()},
        },
        "tasks": {
            "seen": _one(samples, f"{ns}tasks_seen", 0.0),
            "boundaries": _by(samples, f"{ns}task_boundaries_total", "kind"),
        },
        "learning": {
            "meta_updates": _one(samples, f"{ns}meta_updates_total", 0.0),
            "adaptation_gain": _one(samples, f"{ns}adaptation_gain"),
            "nonfinite_skipped": _one(samples, f"{ns}nonfinite_updates_skipped_total", 0.0),
            "replay_items": _by(samples, f"{ns}replay_buffer_items", "memory"),
            "replay_bytes": _by(samples, f"{ns}replay_buffer_bytes", "memory"),
        },
        "latency": {
            "step": _latency(samples, f"{ns}step_seconds"),
            "inner_loop": _latency(samples, f"{ns}inner_loop_seconds"),
            "meta_update": _latency(samples, f"{ns}meta_update_seconds"),
        },
        "checkpoint": {
            "written": _one(samples, f"{ns}checkpoints_total", 0.0),
            "age_seconds": _one(samples, f"{ns}last_checkpoint_age_seconds"),
            "duration": _latency(samples, f"{ns}checkpoint_seconds"),
        },
        "source_errors": _one(samples, f"{ns}source_errors_total", 0.0),
        "process": {
            "uptime_seconds": time.time() - start if start else None,
            "cpu_seconds": _one(samples, "process_cpu_seconds_total"),
            "resident_bytes": _one(samples, "process_resident_memory_bytes"),
        },
    }


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.2f} ms"


def _n(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.0f}"


def _bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return "-"


def _duration(v: float | None) -> str:
    if v is None:
        return "-"
    v = int(v)
    return f"{v // 3600}h{v % 3600 // 60:02d}m" if v >= 3600 else f"{v // 60}m{v % 60:02d}s" if v >= 60 else f"{v}s"


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None or math.isnan(v) else format(v, fmt) + suffix


def format_status(s: dict, url: str = "") -> str:
    """The summary as about a dozen lines of text."""
    b, r, a, t, le, lat, c, p = (s[k] for k in ("build", "records", "accuracy", "tasks", "learning", "latency",
                                                  "checkpoint", "process"))
    params = _n(float(b.get("parameters", "nan")))
    state = "READY" if s["ready"] else "NOT READY"
    rejected = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rejected_by_reason"].items()))
    rejected = f" ({rejected})" if rejected else ""
    parts = "  ".join(f"p{k} {v:.0f}" for k, v in sorted(s["lag"]["by_partition"].items(), key=lambda kv: int(kv[0])))
    parts = f" ({parts})" if parts else ""
    curve = "  ".join(f"{k} {_pct(v)}" for k, v in a["by_task_position"].items())
    # The collector lists tasks oldest first and `other` last: show the newest few, then `other`.
    tracked = [(k, v) for k, v in a["by_task"].items() if k != "other"][-6:][::-1]
    tracked += [(k, v) for k, v in a["by_task"].items() if k == "other" and v["records"]]
    per_task = "  ".join(f"{k} {_pct(v['accuracy'])} (n={v['records']:.0f})" for k, v in tracked) or "-"
    boundaries = t["boundaries"]
    latency = "  ".join(
        f"{name} p50 {_ms(lat[key]['p50'])} p99 {_ms(lat[key]['p99'])}"
        for name, key in (("step", "step"), ("inner", "inner_loop"), ("meta-update", "meta_update"))
    )
    lines = [
        f"stream-meta {b.get('version', '?')}  {b.get('algorithm', '?')}, {params} parameters  {state}"
        f"  up {_duration(p['uptime_seconds'])}  {url}".rstrip(),
        f"records      consumed {_n(r['consumed'])}  learned {_n(r['learned'])}  predictions {_n(r['predictions'])}"
        f"  rejected {_n(r['rejected'])}{rejected}",
        f"throughput   {_num(r['per_second'], '.1f')} rec/s  lag {_n(s['lag']['total'])} records{parts}",
        f"accuracy     {_pct(a['window'])} (sliding window)  tasks seen {_n(t['seen'])}"
        f"  task boundaries: new {_n(boundaries.get('new'))}, return {_n(boundaries.get('return'))}",
        f"adaptation   accuracy by position in task: {curve}",
        f"per task     {per_task}",
        f"learning     meta-updates {_n(le['meta_updates'])}  adaptation gain {_num(le['adaptation_gain'], '+.4f')}"
        f"  non-finite skipped {_n(le['nonfinite_skipped'])}"
        f"  replay {_n(le['replay_items'].get('episodes'))} episodes ({_bytes(le['replay_bytes'].get('episodes'))}),"
        f" {_n(le['replay_items'].get('records'))} records ({_bytes(le['replay_bytes'].get('records'))})",
        f"latency      {latency}",
        f"checkpoints  {_n(c['written'])} written, last {_duration(c['age_seconds'])} ago,"
        f" mean {_ms(c['duration']['mean'])}  source errors {_n(s['source_errors'])}",
        f"process      cpu {_num(p['cpu_seconds'], '.1f', ' s')}  resident memory {_bytes(p['resident_bytes'])}",
    ]
    return "\n".join(lines)


def status(url: str, as_json: bool = False, timeout_s: float = 5.0) -> str:
    """What ``stream-meta status`` prints for the daemon serving ``url``."""
    import json

    summary = summarize(parse(fetch(url, timeout_s)))
    if as_json:
        # NaN (nothing measured yet) is null: bare NaN is not JSON and breaks strict parsers (jq).
        return json.dumps(_nan_to_none(summary), indent=2, default=str, allow_nan=False)
    return format_status(summary, metrics_url(url))


def _nan_to_none(v):
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
