"""Loss weightings: ``{task: loss}`` -> (total loss, ``{task: weight}``)."""
