"""The one place that wires a :class:`RunConfig` to objects."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry

from connectors.base import Offsets, Source
from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.config import RunConfig
from stream_meta.errors import ConfigError
from stream_meta.learn.base import Learner
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner
from stream_meta.daemon.metrics import Metrics
from stream_meta.model import num_parameters
from stream_meta.daemon.service import Service
from stream_meta.daemon.sinks import Sinks
from stream_meta.daemon.stats import RunStats
from stream_meta.daemon.labels import LabelDecoder
from stream_meta.daemon.sync import NoSync, Sync
from stream_meta.daemon.sync_config import SyncMetrics, settings_from_env
from stream_meta.daemon.wire import BatchDecoder
from stream_meta.learn.pending import PendingStore
from stream_meta.learn.tasks import TaskRouter


def config_fingerprint(cfg: RunConfig) -> dict:
    """The settings that fix a checkpoint's shapes and meaning; a directory keeps them for life."""
    return {"input_dim": cfg.input_dim, "num_classes": cfg.num_classes, "hidden": list(cfg.hidden),
            "algorithm": cfg.algorithm, "net_hidden": cfg.net_hidden,  # net_hidden: the shapes of a learned rule/loss
            "net_modulate": cfg.net_modulate}  # a key older directories lack is not compared


def check_local_settings(cfg: RunConfig) -> CheckpointStore:
    """Operator mistakes found without a broker, as one-line errors before a learner or client exists:
    an unusable checkpoint directory, one written with other settings, a missing input file."""
    store = CheckpointStore(cfg.checkpoint_dir, cfg.checkpoint_keep, config_fingerprint(cfg))
    store.prepare()
    store.verify()
    if cfg.input_file is not None and not cfg.input_file.is_file():
        raise ConfigError(f"--input-file {cfg.input_file}: no such file; give the path of a JSON-lines file")
    return store


def configure_torch(cfg: RunConfig) -> None:
    """Process-wide torch settings, before anything is built: threads, determinism, subnormals.

    Flush-to-zero is set on the calling thread, the one that learns with one torch thread
    (the default); values below ~1e-38 become 0, which no learner here can tell apart."""
    import torch

    torch.set_num_threads(1 if cfg.deterministic else cfg.torch_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(cfg.flush_denormal)


def build_learner(cfg: RunConfig) -> Learner:
    """The learner ``cfg.algorithm`` names, handed its configuration groups whole."""
    if cfg.algorithm == "sgd":
        return OnlineSGDLearner(cfg.model_cfg, lr=cfg.sgd_lr, seed=cfg.seed)
    try:
        return OnlineMetaLearner(
            cfg.model_cfg,
            inner_cfg=cfg.inner_cfg,
            meta_cfg=cfg.meta_cfg,
            replay_cfg=cfg.replay_cfg,
            reg_cfg=cfg.reg_cfg,
            probe_cfg=cfg.probe_cfg,
            fast_weight_cache=cfg.fast_weight_cache,
            seed=cfg.seed,
        )
    except ValueError as exc:  # what only the built model can tell, e.g. an ANIL head naming no parameter
        raise ConfigError(f"invalid learner configuration: {exc}") from None


def build_service(cfg: RunConfig, registry: CollectorRegistry) -> Service:
    """A ready-to-run service: Kafka in and out, or JSON-lines files with ``input_file``."""
    store = check_local_settings(cfg)
    learner = build_learner(cfg)
    metrics = Metrics(registry)
    metrics.set_build(cfg.algorithm, num_parameters(learner.params))
    if cfg.input_file is not None:
        from connectors.jsonl import JsonlSink, JsonlSource

        def open_source(offsets: Offsets, on_revoke) -> Source:
            return JsonlSource(cfg.input_file, offsets, cfg.max_poll_records, follow=not cfg.stop_at_end)

        out_dir = cfg.checkpoint_dir
        dlq = JsonlSink(out_dir / "dead-letters.jsonl")
        predictions = JsonlSink(out_dir / "predictions.jsonl") if cfg.predictions_topic else None
    else:
        from connectors.kafka import KafkaSink, KafkaSource, client_options

        options = client_options(cfg)

        def open_source(offsets: Offsets, on_revoke) -> Source:
            return KafkaSource(
                bootstrap=cfg.bootstrap, topic=cfg.topic, group=cfg.group, start_offsets=offsets,
                on_revoke=on_revoke, max_poll_records=cfg.max_poll_records, connect_timeout_s=cfg.connect_timeout_s,
                labels_topic=cfg.labels_topic,
                client_options={
                    **options,
                    "session_timeout_ms": cfg.session_timeout_ms,
                    "heartbeat_interval_ms": max(100, cfg.session_timeout_ms // 3),
                },
            )

        dlq = KafkaSink(bootstrap=cfg.bootstrap, client_options=options, max_request_size=cfg.dlq_max_message_bytes,
                        connect_timeout_s=cfg.connect_timeout_s)
        predictions = dlq if cfg.predictions_topic else None
    sync = build_sync(cfg, learner, registry)
    return Service(
        settings=cfg.service_settings,
        learner=learner,
        decoder=BatchDecoder(cfg.input_dim, cfg.num_classes, cfg.max_message_bytes),
        stats=RunStats(cfg.accuracy_window, cfg.max_tasks),
        open_source=open_source,
        sinks=Sinks(dlq, predictions),
        metrics=metrics,
        store=store,
        router=TaskRouter(cfg.task_mode),
        pending=PendingStore(cfg.pending_capacity, cfg.label_ttl_records),
        labels=LabelDecoder(cfg.num_classes),
        sync=sync,
    )


def build_sync(cfg: RunConfig, learner: Learner, registry: CollectorRegistry) -> Sync | NoSync:
    """A scale-out group from the standard torch.distributed environment; none at world size 1."""
    settings = settings_from_env(os.environ, cfg.sync_every, cfg.sync_every_s, cfg.sync_timeout_s,
                                 cfg.sync_overlap, cfg.sync_momentum, cfg.sync_outer_lr, cfg.sync_lr_scale)
    if settings is None:
        return NoSync()
    return Sync(learner, settings, SyncMetrics(registry))
