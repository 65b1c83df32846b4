"""trainmon: watch model training on GPU clusters.

`import trainmon` is cheap: the shared core (contract, settings) imports only the standard library.
"""

__version__ = "0.1.0"
