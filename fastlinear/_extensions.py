"""The compiled extensions, imported with an error that says what to do when one is
not built: _core when fastlinear is imported, _blas (which loads scipy, most of a cold
import's time) when the BLAS backend first runs."""
import importlib
import importlib.machinery
import os


def load(name):
    """The extension fastlinear.<name>. When it is not built, the usual reason is that
    Python found this source folder (the current directory or PYTHONPATH comes first on
    sys.path) instead of the installed package: the error says so, and what to do."""
    package = __name__.rpartition(".")[0]
    try:
        return importlib.import_module(f"{package}.{name}")
    except ImportError as exc:
        folder = os.path.dirname(os.path.abspath(__file__))
        if any(os.path.exists(os.path.join(folder, name + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            raise  # built, but it does not load: the original error says why
        raise ImportError(
            f"fastlinear was imported from the source folder {folder} instead of the "
            f"installed package, and its compiled extension {name} is not built there "
            f"(for this Python). Run Python from another folder, or build in place: "
            f"pip install -e . (or python setup.py build_ext --inplace)") from exc
