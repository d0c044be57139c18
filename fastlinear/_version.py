"""The version, on its own so that modules of the package can read it without importing
the package (whose __init__ imports them)."""
__version__ = "0.1.0"
