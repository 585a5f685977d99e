"""`lfm2-audio`, the command line: `main` (entry point and dispatch), `common` (flags, loading,
presentation, exit statuses), one module per command (`transcribe`, `speak`, `chat`, `llama` for
the llama.cpp form; `convert` and `live` where installed)."""

from .main import main

__all__ = ["main"]
