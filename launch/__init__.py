"""corolla: launch."""
