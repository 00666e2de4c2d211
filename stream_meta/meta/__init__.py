"""The MAML family, functional: parameters are dicts, the model is applied with
``torch.func.functional_call``."""

from stream_meta.meta.functional import (
    ALGORITHMS,
    Episode,
    MetaAlgorithm,
    adapt,
    get_algorithm,
    loss,
)

__all__ = ["ALGORITHMS", "Episode", "MetaAlgorithm", "adapt", "get_algorithm", "loss"]
