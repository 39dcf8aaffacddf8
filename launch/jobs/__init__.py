"""Jobs: starting, watching and cancelling a run, through one interface (backend.py) with two backends: processes on
this machine (local.py) and Slurm (the slurm/ package). Before either starts anything, prepare.py validates the
whole job, prepares its data and plan and writes the run directory; monitor.py reads it back for `corolla status`.
`corolla pipeline`'s stages are stages.py's, run here one after the other by main_job.py (on Slurm: slurm/chain.py)."""
