"""Data sets (one file per on-disk format), transforms, collation and the Lightning data module."""
