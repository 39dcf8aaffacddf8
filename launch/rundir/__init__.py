"""A run directory: the names of what it holds, its history across launches, its MLflow run, and the readers that
`corolla status` uses. Every stage writes here through these modules; none spells a file name of its own."""
