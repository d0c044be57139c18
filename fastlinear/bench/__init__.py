"""fastlinear's benchmark: fastlinear against numpy, PyTorch, ONNX Runtime and OpenVINO
in one process at one thread count (`python -m fastlinear.bench --help`).

Its modules, each importing only those above it:

    limits.py (+ limits.c)  this machine's FMA peak and read bandwidth, probed in C
                            (`python -m fastlinear.bench.limits`)
    harness.py              threads for every library, the rivals' sessions, timing,
                            errors, progress, the description of the machine
    linear.py               the float32/float64 table and its sweep of M (--plot)
    compressed.py           a table per compressed weight format (--weight-dtype)
    mlp.py                  whole models (--mlp)
    transformer.py          a torch transformer, its Linear layers replaced (--transformer)
    __main__.py             the command line: `main(argv)`
"""
