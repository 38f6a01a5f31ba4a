"""The inputs: one class per modality, configured at ``data.<modality>``.

Each reads its value from a raw item, preprocesses it (training and evaluation), collates a
batch of it (padding and mask), gives lengths for bucketing, fits on the training split,
reports the facts its encoder needs and its part of the feature-cache key
(:class:`mmtrain.contracts.Input`). A new modality is one file here, one encoder and their
YAML presets.
"""

from mmtrain.data.inputs.audio import AudioInput
from mmtrain.data.inputs.base import Input
from mmtrain.data.inputs.image import ImageInput
from mmtrain.data.inputs.tabular import TabularInput
from mmtrain.data.inputs.text import TextInput

__all__ = ["AudioInput", "ImageInput", "Input", "TabularInput", "TextInput"]
