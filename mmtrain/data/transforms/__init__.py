"""Preprocessing driven from config: image sizing/augmentation, tokenisation (a causal LM's
tokenizer and chat template too), audio features."""

from mmtrain.data.transforms.audio import AudioTransform
from mmtrain.data.transforms.char import CharTokenizer
from mmtrain.data.transforms.image import ImageTransform
from mmtrain.data.transforms.lm_tokenizer import LMTokenizer
from mmtrain.data.transforms.text import WordTokenizer

__all__ = ["AudioTransform", "CharTokenizer", "ImageTransform", "LMTokenizer", "WordTokenizer"]
