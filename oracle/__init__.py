"""The Oracle's command line (`oracle`) and its real SOM worker, on top of core, service and
training: watches SOM trainings and tells each one whether it is worth finishing."""

__version__ = "0.1.0"
