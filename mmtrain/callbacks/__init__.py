"""Lightning callbacks of mmtrain (configured in the ``callbacks`` group)."""
