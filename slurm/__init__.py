"""corolla: slurm."""
