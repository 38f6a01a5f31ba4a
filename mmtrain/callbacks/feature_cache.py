"""``data.cache_features=true``: the frozen encoders' features are computed once, before
training, and read back from a memory-mapped cache (:mod:`mmtrain.data.feature_cache`).

``build_trainer`` adds :class:`FeatureCache` when the data module asks for the cache.
"""

from __future__ import annotations

import pytorch_lightning as pl

from mmtrain.data.feature_cache import build_feature_cache


class FeatureCache(pl.Callback):
    """Build (or find) the cache at the start of ``fit``, before any loader is made, and tell
    the module which cached modalities carry a mask (``cache_masked``)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "cache_features", False):
            pl_module.cache_masked = build_feature_cache(pl_module, datamodule)
