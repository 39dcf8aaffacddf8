"""The plan: which layout a job trains with on the ranks it gets, how the pipeline is cut, which ZeRO stage runs, and
what each layout costs in memory and time; `RunPlan`, written once into the run directory and read by every rank.

Pure functions of the configuration and the facts of the data: no torch, nothing started, nothing written but the
plan itself (and an import's imported.json, whose writer weights.py keeps beside its reader).
"""
