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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from stream_meta.errors import ConfigError
from stream_meta.learn.config import (
    BACKENDS, BATCH_STEP_SCALES, BATCH_UPDATES, LOSSES, InnerLoopConfig, MetaStepConfig, ModelConfig, ProbeConfig, RegularizerConfig, ReplayConfig,
)
from stream_meta.learn.presets import DEFAULT_PRESET, PRESETS, preset_settings

ENV_PREFIX = "STREAM_META_"

# The values ``algorithm`` accepts, spelled out so loading a config needs no torch; a test
# checks this list against the learners that exist (stream_meta.learn.learner.learner_names).
ALGORITHM_CHOICES = ("maml", "fomaml", "reptile", "metasgd", "lamaml", "anil", "gail-meta", "neural-optimizer", "lmml", "sgd")
# Learner defaults are the default preset's settings (stream_meta.learn.presets, chosen by `bench defaults`).
_D = preset_settings(DEFAULT_PRESET)


@dataclass(frozen=True)
class ServiceSettings:
    """What the service loop itself reads: polling, learn batches, checkpoints, stopping, sinks."""

    poll_timeout_s: float = 0.5
    learn_batch: int = 1
    max_batch_wait_s: float = 0.05
    checkpoint_every_records: int = 2000
    checkpoint_every_s: float = 30.0
    max_records: int | None = None
    stop_at_end: bool = False
    idle_timeout_s: float | None = None
    offset_reset_policy: str = "earliest"
    dlq_topic: str = "stream-meta.records.dlq"
    predictions_topic: str | None = None
    labels_topic: str | None = None
    dlq_max_message_bytes: int = 1 << 20
    dlq_failure_policy: str = "skip"
    session_timeout_s: float = 10.0
    progress: bool = False
    accuracy_window: int = 1000
    checkpoint_dir: Path = Path("checkpoints")


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
    labels_topic: str | None = Field(None, description="late labels ({\"id\", \"y\"} messages) also come on this "
                                     "topic, consumed in the same group and merged with the records by message time "
                                     "(Kafka only; without it they come on --topic)")
    dlq_failure_policy: Literal["skip", "fail"] = Field(
        "skip", description="when a dead letter cannot be written (topic missing, not authorised, refused): "
        "skip = count, log and go on; fail = exit with code 2, offsets not committed past the record")
    dlq_max_message_bytes: int = Field(1 << 20, ge=1 << 16, description="largest message sent to the dead-letter "
                                       "and predictions topics (producer max_request_size); a longer dead letter is "
                                       "truncated to its first dlq_max_message_bytes - 16 KiB - key bytes")
    max_message_bytes: int = Field(1 << 20, ge=64, description="larger messages are rejected as too_large")
    poll_timeout_ms: int = Field(500, ge=1, description="how long one poll waits for records")
    max_poll_records: int = Field(500, ge=1, description="records fetched per poll at most")
    task_mode: Literal["field", "detect", "auto"] = Field(
        "auto", description="where a record's task comes from: field = its task field (absent: 'default'); "
        "detect = found from the learner's own losses (auto-N), recurring tasks recognised; auto = the field "
        "when present, detection otherwise")
    pending_capacity: int = Field(100_000, ge=1, description="unlabelled records with an id kept for a late label")
    label_ttl_records: int = Field(1_000_000, ge=1, description="records after which a pending record's label "
                                   "is too late (label_expired)")
    learn_batch: int = Field(1, ge=1, le=4096, description="records predicted together, then learned together "
                             "(at most one meta-update per task per batch); 1 = one record at a time")
    max_batch_wait_ms: int = Field(50, ge=0, description="a learn batch still incomplete after this long is "
                                   "learned as it is, so a slow topic is not held back")
    session_timeout_ms: int = Field(10000, ge=1000, description="consumer-group session timeout")
    request_timeout_ms: int = Field(30000, ge=1000, description="Kafka client request timeout")
    connect_timeout_s: float = Field(60.0, gt=0, description="at start-up, retry an unreachable broker with "
                                     "backoff this long, then exit with code 2")
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
    # The algorithms' own options, passed to the algorithm unchanged (see stream_meta.learn.config).
    loss: Literal[LOSSES] = Field("ce", description="inner-loop loss: ce (cross-entropy) or mse (squared error "  # type: ignore[valid-type]
                                  "of the logits against one-hot labels)")
    first_order: bool = Field(False, description="metasgd, lamaml, anil, neural-optimizer only: first-order meta-gradient "
                              "(no differentiation through the inner steps)")
    head: tuple[str, ...] | None = Field(None, description="anil only: parameter names the inner loop adapts, "
                                         "e.g. 2.weight,2.bias; None = the last layer")
    max_scale: float | None = Field(None, gt=0, description="metasgd, lamaml, neural-optimizer only: upper bound of the learned "
                                    "step-size multipliers; None = the algorithm's own (10)")
    net_hidden: int | None = Field(None, ge=1, description="neural-optimizer, lmml only: width of the learned "
                                   "update rule's or loss's network; None = the algorithm's own (16)")
    net_bound: float | None = Field(None, gt=0, description="neural-optimizer, lmml only: bound on that network's "
                                    "outputs (rule: log step multiplier and direction; loss: the learned term); None = the algorithm's own "
                                    "(0.5 for the rule, 0.1 for the loss)")
    net_modulate: bool = Field(False, description="lmml only: modulate the loss network's hidden layer per task "
                               "(scale and shift generated from the support set's state, MeTAL-style)")
    max_inner_lr: float = Field(10.0, gt=0, description="largest inner step size the algorithm accepts (a guard)")
    adversarial_weight: float | None = Field(None, ge=0, le=100, description="gail-meta only: weight of the "
                                             "generator's adversarial term next to the query loss; None = 0.1")
    generator_hidden: int | None = Field(None, ge=1, le=4096, description="gail-meta only: hidden units of the "
                                         "head generator; None = 32")
    expert_steps: int | None = Field(None, ge=0, le=50, description="gail-meta only: inner steps of the "
                                     "gradient-adapted expert the discriminator compares with; None = inner_steps")
    prefix_shots: int | None = Field(None, ge=0, le=50, description="gail-meta only: the generator also learns from "
                                     "heads of each episode's first 1..N support records (0 = off); None = 4")
    backend: Literal[BACKENDS] = Field("auto", description="meta-gradient engine, one of auto (the fastest "  # type: ignore[valid-type]
                                       "that applies, else the torch.func reference), reference, fast")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the meta-gradient's global norm to this "
                                         "(None = no clipping)")
    batch_step_scale: Literal[BATCH_STEP_SCALES] = Field(  # type: ignore[valid-type]
        "none", description="with --learn-batch N > 1, scale a task's one meta-update per batch by the episodes it "
        "learns together, k: none (meta_lr), sqrt (meta_lr*sqrt(k)) or linear (meta_lr*k), at most 16x; "
        "k = 1 (N = 1) is unchanged")
    batch_update: Literal[BATCH_UPDATES] = Field(  # type: ignore[valid-type]
        "each", description="with --learn-batch N > 1, a task's one meta-update per batch takes one outer step "
        "per new episode, oldest first, as N = 1 would (each: with batch_inner_steps inner steps), or one step "
        "on all of them together (one: inner_steps, scaled by batch_step_scale); N = 1 is unchanged")
    batch_inner_steps: int | None = Field(None, ge=1, le=100, description="with batch_update each and N > 1: inner "
                                          "steps of each outer step (default: inner_steps, as N = 1 takes them; 1 is "
                                          "cheap, one pass over the step's records, and loses on few-shot streams)")
    sgd_lr: float = Field(0.1, gt=0, le=10, description="step size of the sgd baseline (algorithm sgd)")
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
    flush_denormal: bool = Field(True, description="flush subnormal floats to zero on the learning thread: a long "
                                 "run's gradients and Adam moments drift into the subnormal range, where CPU "
                                 "float math is several times slower (bench soak)")
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
    # --- scale-out (members named by WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT; see daemon/sync.py) ---
    sync_every: int = Field(10, ge=1, description="with WORLD_SIZE > 1: average the meta-parameters across the "
                            "group every this many meta-updates")
    sync_every_s: float | None = Field(None, gt=0, description="also average after this many seconds without a "
                                       "round (lets an idle member take part)")
    sync_timeout_s: float = Field(30.0, gt=0, description="a sync round or rendezvous not done within this long "
                                  "fails: counted, logged, the member learns alone and re-forms the group later")
    sync_momentum: float = Field(0.0, ge=0, lt=1, description="SlowMo outer momentum on each round's averaged "
                                 "update of the meta-parameters (slow lr 1); 0 = plain averaging")
    sync_outer_lr: float = Field(1.0, gt=0, le=4, description="SlowMo slow learning rate: each round moves the "
                                 "meta-parameters this far along the group's averaged update (1 = to the mean)")
    sync_lr_scale: Literal["none", "sqrt", "linear"] = Field(
        "linear", description="each member's meta-steps times the members that learned in parallel in the last round "
        "(sqrt: its square root; none: meta_lr as alone): n members make 1/n of one daemon's sequential steps")
    sync_overlap: bool = Field(False, description="run each round's all-reduce while the member learns on and apply "
                               "it at the next round (one round stale, local steps kept): no member waits for a slower "
                               "one unless it falls a whole round behind")

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

    @field_validator("head", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip()) or None
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
        if self.labels_topic is not None:
            if self.labels_topic in (self.topic, self.dlq_topic, self.predictions_topic):
                raise ValueError(f"labels_topic {self.labels_topic!r} must differ from topic, dlq_topic and "
                                 "predictions_topic (labels on the records' own topic need no labels_topic)")
            if self.input_file is not None:
                raise ValueError("labels_topic needs Kafka; with input_file put the label messages in the same file")
        return self

    @model_validator(mode="after")
    def _groups_valid(self) -> "RunConfig":
        # Building the groups checks what no single field can (an option the algorithm lacks).
        if self.algorithm != "sgd":
            self.inner_cfg, self.meta_cfg, self.replay_cfg, self.reg_cfg, self.probe_cfg
        return self

    # --- the learner's configuration groups, each handed whole to the learner ---------
    @property
    def model_cfg(self) -> ModelConfig:
        return ModelConfig(self.input_dim, self.num_classes, self.hidden)

    @property
    def inner_cfg(self) -> InnerLoopConfig:
        return InnerLoopConfig(
            algorithm=self.algorithm, steps=self.inner_steps, lr=self.inner_lr, loss=self.loss,
            first_order=self.first_order, head=self.head, max_scale=self.max_scale,
            adversarial_weight=self.adversarial_weight, generator_hidden=self.generator_hidden,
            expert_steps=self.expert_steps, prefix_shots=self.prefix_shots,
            net_hidden=self.net_hidden, net_bound=self.net_bound, net_modulate=self.net_modulate,
            max_inner_lr=self.max_inner_lr, backend=self.backend,
        )

    @property
    def meta_cfg(self) -> MetaStepConfig:
        return MetaStepConfig(
            meta_lr=self.meta_lr, clip_grad_norm=self.clip_grad_norm, support_size=self.support_size,
            query_size=self.query_size, episode_stride=self.episode_stride,
            replay_per_update=self.replay_per_update, max_tasks=self.max_tasks,
            batch_step_scale=self.batch_step_scale, batch_update=self.batch_update,
            batch_inner_steps=self.batch_inner_steps,
        )

    @property
    def replay_cfg(self) -> ReplayConfig:
        return ReplayConfig(self.replay_capacity, self.memory_capacity, self.memory_policy, self.memory_query)

    @property
    def reg_cfg(self) -> RegularizerConfig:
        return RegularizerConfig(self.regularizer, self.reg_strength, self.reg_decay)

    @property
    def probe_cfg(self) -> ProbeConfig:
        return ProbeConfig(self.probe_per_task, self.probe_every)

    # --- the service loop's own settings, handed whole to the service ------------------
    @property
    def service_settings(self) -> ServiceSettings:
        return ServiceSettings(
            poll_timeout_s=self.poll_timeout_ms / 1000, learn_batch=self.learn_batch,
            max_batch_wait_s=self.max_batch_wait_ms / 1000, checkpoint_every_records=self.checkpoint_every_records,
            checkpoint_every_s=self.checkpoint_every_s, max_records=self.max_records, stop_at_end=self.stop_at_end,
            idle_timeout_s=self.idle_timeout_s, offset_reset_policy=self.offset_reset_policy,
            dlq_topic=self.dlq_topic, predictions_topic=self.predictions_topic, labels_topic=self.labels_topic,
            dlq_max_message_bytes=self.dlq_max_message_bytes, dlq_failure_policy=self.dlq_failure_policy,
            session_timeout_s=self.session_timeout_ms / 1000, progress=self.progress,
            accuracy_window=self.accuracy_window, checkpoint_dir=self.checkpoint_dir,
        )

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
        help_text = field.description or ""
        if "default" not in help_text and field.default is not None:  # a description may name its own default
            default = field.default
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f"{help_text} (default: {shown})".lstrip()
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        # Literal fields and the algorithm list their values in --help and in the error for a wrong one.
        literal = get_origin(field.annotation) is Literal
        choices = ALGORITHM_CHOICES if name == "algorithm" else get_args(field.annotation) if literal else ()
        if choices:
            parser.add_argument(flag, default=argparse.SUPPRESS, choices=choices, help=help_text)
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
