"""Features: transforms, Spark, raw reads, the model-input function, online lookups, scoring times."""
