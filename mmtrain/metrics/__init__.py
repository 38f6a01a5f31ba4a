"""Metrics that torchmetrics lacks: image-captioning scores (BLEU, ROUGE-L, CIDEr-D)."""
