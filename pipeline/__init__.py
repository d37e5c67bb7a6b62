"""samstream: streaming video segmentation on MobileSAM.

The package root imports nothing heavy (no torch, no ray) so that the CLI starts instantly.
"""

__version__ = "0.1.0"
