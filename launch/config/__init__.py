"""Configuration: every command's typed schema, Hydra composition, and reading a run's job back; no torch here.

The first stage of the flow (config → plan → train → jobs → cli): everything else receives the typed objects this
package builds, validated once and whole.
"""
