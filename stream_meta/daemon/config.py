"""One validated, frozen configuration, loaded at the edge.

Precedence (lowest to highest): defaults, a config file (``--config``, YAML or
JSON), ``STREAM_META_*`` environment variables, command-line flags. Every field
below is settable in all three places: ``input_dim`` is ``input_dim:`` in the
file, ``STREAM_META_INPUT_DIM`` in the environment and ``--input-dim`` on the
command line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from stream_meta.errors import ConfigError
from stream_meta.learn.presets import DEFAULT_PRESET, PRESETS, preset_settings

ENV_PREFIX = "STREAM_META_"

# The values ``algorithm`` accepts, spelled out so loading a config needs no torch; a test
# checks this list against the learners that exist (stream_meta.learn.learner.learner_names).
ALGORITHM_CHOICES = ("maml", "fomaml", "reptile", "metasgd", "lamaml", "anil", "sgd")
# Learner defaults are the default preset's settings (stream_meta.learn.presets, chosen by `bench defaults`).
_D = preset_settings(DEFAULT_PRESET)


class RunConfig(BaseModel):
    """Settings of ``stream-meta run`` (and of the demo, which builds one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- source and sinks -------------------------------------------------
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    topic: str = Field("stream-meta.records", description="topic to consume")
    group: str = Field("stream-meta", description="consumer group id")
    input_file: Path | None = Field(None, description="read wire-format JSON lines from this file instead of Kafka")
    dlq_topic: str | None = Field(None, description="dead-letter topic (default: <topic>.dlq)")
    predictions_topic: str | None = Field(None, description="publish one prediction per record here (optional)")
    max_message_bytes: int = Field(1 << 20, ge=64, description="larger messages are rejected as too_large")
    poll_timeout_ms: int = Field(500, ge=1, description="how long one poll waits for records")
    max_poll_records: int = Field(500, ge=1, description="records fetched per poll at most")
    session_timeout_ms: int = Field(10000, ge=1000, description="consumer-group session timeout")
    request_timeout_ms: int = Field(30000, ge=1000, description="Kafka client request timeout")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="e.g. PLAIN, SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    offset_reset_policy: Literal["earliest", "fail"] = Field(
        "earliest", description="when a partition's log restarts below the checkpointed offset: "
        "earliest = learn what the broker holds now as new records (logged, counted); fail = stop with an error"
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="after SIGTERM/SIGINT, exit with code 3 if the "
                                      "graceful stop (final checkpoint) takes longer than this")
    deterministic: bool = Field(False, description="fixed seeds, deterministic torch algorithms, one thread")
    # --- stopping ---------------------------------------------------------
    max_records: int | None = Field(None, ge=1, description="stop cleanly after this many records consumed")
    stop_at_end: bool = Field(False, description="stop once the backlog seen at start is consumed")
    idle_timeout_s: float | None = Field(None, gt=0, description="stop after this long without records")
    summary_json: Path | None = Field(None, description="write the run summary here at exit")
    # --- model and learner ------------------------------------------------
    input_dim: int = Field(64, ge=1, description="length of x")
    num_classes: int = Field(10, ge=2, description="labels are integers in [0, num_classes)")
    hidden: tuple[int, ...] = Field((100, 100), description="hidden layer sizes, e.g. 100,100")
    preset: str | None = Field(None, description="named learner settings (" + ", ".join(PRESETS) + "); "
                                "settings given explicitly override the preset's")
    algorithm: str = Field(_D["algorithm"], description="meta-learning algorithm")
    inner_steps: int = Field(5, ge=0, le=50, description="inner-loop SGD steps (K)")
    inner_lr: float = Field(0.1, gt=0, le=10, description="inner-loop step size (alpha)")
    meta_lr: float = Field(_D["meta_lr"], gt=0, le=1, description="outer (meta) step size (beta), Adam")
    support_size: int = Field(20, ge=1, description="support records per episode at most")
    query_size: int = Field(5, ge=1, description="query records per episode")
    episode_stride: int = Field(5, ge=1, description="new labelled records of a task between episodes")
    replay_capacity: int = Field(200, ge=0, description="episodes kept in the reservoir replay memory")
    replay_per_update: int = Field(_D["replay_per_update"], ge=0, description="replayed episodes mixed into each meta-update")
    memory_capacity: int = Field(_D["memory_capacity"], ge=0, description="records kept in the record replay memory (0 = off)")
    memory_policy: Literal["reservoir", "task", "class"] = Field(
        _D["memory_policy"], description="which records the replay memory keeps: uniform over the stream, or balanced by task / class")
    memory_query: int = Field(_D["memory_query"], ge=0, description="replayed records appended to each meta-update's query set (MER / La-MAML)")
    regularizer: Literal["none", "ewc", "si", "mas"] = Field(
        "none", description="penalty anchoring the meta-parameters, consolidated at each task change")
    reg_strength: float = Field(0.0, ge=0, description="the regulariser's weight (lambda)")
    reg_decay: float = Field(1.0, ge=0, le=1, description="share of earlier tasks' importance kept at each task change")
    probe_per_task: int = Field(0, ge=0, description="records per task held out from learning to estimate "
                                "forgetting live (0 = off; 1 in 10 of a task's first records)")
    probe_every: int = Field(1000, ge=1, description="learned records between re-evaluations of the probe sets")
    max_tasks: int = Field(1000, ge=1, description="tasks whose recent-record windows are kept (LRU)")
    fast_weight_cache: int = Field(16, ge=1, description="tasks whose adapted fast weights are cached (LRU, checkpointed)")
    seed: int = 0
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (1 is fastest next to other busy processes)")
    # --- metrics, checkpoints, logs ----------------------------------------
    metrics_port: int | None = Field(9108, ge=0, le=65535, description="HTTP /metrics /healthz /readyz port; 0 = any free")
    metrics_host: str = Field("127.0.0.1", description="bind address of the HTTP endpoints")
    accuracy_window: int = Field(1000, ge=1, description="records in the sliding prequential-accuracy window")
    checkpoint_dir: Path = Field(Path("checkpoints"), description="where state + offsets are checkpointed")
    checkpoint_every_records: int = Field(2000, ge=1)
    checkpoint_every_s: float = Field(30.0, gt=0)
    checkpoint_keep: int = Field(3, ge=1)
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress: bool = Field(False, description="show a progress line on stderr")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        # A preset supplies defaults only: whatever the file, environment or flags set wins.
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in PRESETS:
                raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
            data = {**preset_settings(name), **data}
        return data

    @field_validator("hidden", mode="before")
    @classmethod
    def _split_sizes(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(int(s) for s in v.split(",") if s.strip())
        return v

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in v):
            raise ValueError("hidden sizes must be positive")
        return v

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        if v not in ALGORITHM_CHOICES:
            raise ValueError(f"unknown algorithm {v!r}; choose one of {', '.join(ALGORITHM_CHOICES)}")
        return v

    @model_validator(mode="after")
    def _defaults_from_others(self) -> "RunConfig":
        if self.dlq_topic is None:
            object.__setattr__(self, "dlq_topic", f"{self.topic}.dlq")
        return self

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked, for the start-up log."""
        out = json.loads(self.model_dump_json())
        for key in ("sasl_password",):
            if out.get(key):
                out[key] = "**********"
        return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    fields = RunConfig.model_fields
    out: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in fields:
                out[name] = value
            elif name != "config":
                raise ConfigError(f"unknown setting in environment: {key}")
    return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field; only flags actually given override file and environment."""
    parser.add_argument("--config", type=Path, help="YAML or JSON file of settings")
    for name, field in RunConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)


def load_config(
    flags: Mapping[str, Any], env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Merge file, environment and flags into one validated :class:`RunConfig`."""
    env = os.environ if env is None else env
    flags = dict(flags)
    config_path = flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if config_path:
        merged.update(_read_file(Path(config_path)))
    merged.update(_from_env(env))
    merged.update({k: v for k, v in flags.items() if k in RunConfig.model_fields})
    merged.update(overrides or {})
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
