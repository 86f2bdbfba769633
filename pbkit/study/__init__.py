"""Studies: a grid of runs (methods x scopes x targets x seeds ...) from one study file, run on Ray
(a local Ray, or a cluster) or in the driver, resumable, with every record written by the driver."""
