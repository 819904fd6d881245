"""A model for people and programs: the OpenAI-compatible HTTP API with the inspector page,
and the terminal chat."""
