"""enginehouse: one local LLM server, Ollama's and OpenAI's APIs in front, any engine behind."""

__version__ = "0.1.0"

__all__ = ["__version__"]
