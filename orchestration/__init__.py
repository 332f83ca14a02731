"""progress-refresh: Bible progress coverage read models kept fresh per changed version."""
