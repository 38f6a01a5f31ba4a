"""Preprocessing driven from config: image sizing/augmentation, tokenisation, audio features."""

from mmtrain.data.transforms.audio import AudioTransform
from mmtrain.data.transforms.char import CharTokenizer
from mmtrain.data.transforms.image import ImageTransform
from mmtrain.data.transforms.text import WordTokenizer

__all__ = ["AudioTransform", "CharTokenizer", "ImageTransform", "WordTokenizer"]
