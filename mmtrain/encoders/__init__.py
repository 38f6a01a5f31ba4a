"""Encoders: one modality's batch tensor -> :class:`mmtrain.contracts.Features`."""
