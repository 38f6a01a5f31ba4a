"""mmtrain: a config-driven multimodal training framework.

Importing this package is cheap on purpose: no torch, no Lightning. The CLI's help and config
composition run on this import alone.
"""

__version__ = "0.1.0"
