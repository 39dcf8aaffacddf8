"""corolla: model."""
