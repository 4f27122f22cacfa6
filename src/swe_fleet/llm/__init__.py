"""LLM backends implementing :class:`swe_fleet.chat.Generator`."""
