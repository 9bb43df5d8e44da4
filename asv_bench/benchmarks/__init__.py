"""asv benchmarks of rmsprop_c: one concern per module, shared data builders in ``common``."""
