"""trustvision: image classifiers that survive the real world."""

__version__ = "0.1.0"
