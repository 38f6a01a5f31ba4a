"""The targets: one class per kind of target, configured at ``data.targets.<task>`` (a task
with no entry is a :class:`LabelTarget`).

Each fits on the training split (classes, a vocabulary; kept in the checkpoint), encodes and
collates its task's target, gives the references that metrics need, reports the facts its
head needs and writes predictions in the task's official format
(:class:`mmtrain.contracts.Target`).
"""

from mmtrain.data.targets.answers import AnswersTarget
from mmtrain.data.targets.base import Target
from mmtrain.data.targets.chat import ChatTarget
from mmtrain.data.targets.label import LabelTarget
from mmtrain.data.targets.mask import MaskTarget
from mmtrain.data.targets.text import TextTarget

__all__ = ["AnswersTarget", "ChatTarget", "LabelTarget", "MaskTarget", "Target", "TextTarget"]
