"""Fusions: ``{modality: Features}`` -> one :class:`mmtrain.contracts.Features`."""
