"""vlmdata: acquire, verify, lay out and mix LLaVA-family training data."""
__version__ = "0.1.0"
