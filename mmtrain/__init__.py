"""mmtrain: a config-driven multimodal training framework.

Importing this package is cheap on purpose: no torch, no Lightning. The CLI's help and config
composition run on this import alone.
"""

__version__ = "0.1.0"


def load(path: str, device: str = "cpu") -> object:
    """A trained model, ready to predict: ``mmtrain.load(checkpoint)(image=..., text=...)``
    (see :class:`mmtrain.predictor.Predictor`). torch is imported here, not by ``import
    mmtrain``."""
    from mmtrain.predictor import load as load_predictor

    return load_predictor(path, device)
