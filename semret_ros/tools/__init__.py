"""Command-line tools: semret-query, semret-play, semret-train, semret-eval and the demo."""
