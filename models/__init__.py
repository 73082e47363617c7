"""The embedded default model: its weights, pipeline, and the code that trains and scores it."""
