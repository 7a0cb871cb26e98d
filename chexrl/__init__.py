"""chexrl: R1-style post-training of chest X-ray VLMs."""

__version__ = "0.1.0"
