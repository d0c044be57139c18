"""The benchmark, runnable from the repository root (where `python -m fastlinear.bench`
would import the unbuilt sources instead of the installed package)."""
from fastlinear.bench.__main__ import main

main()
