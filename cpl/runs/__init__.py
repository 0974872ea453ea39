"""Run directories: layout, status, queue, launching."""
