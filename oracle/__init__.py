"""The Oracle: watches SOM trainings and tells each one whether it is worth finishing."""

__version__ = "0.1.0"
