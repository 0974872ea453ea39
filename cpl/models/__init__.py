"""Re-ID networks."""
