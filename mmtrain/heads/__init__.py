"""Task heads: fused Features -> outputs, loss, metrics and decoded predictions."""
