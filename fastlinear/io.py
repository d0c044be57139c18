"""Saving and loading state dicts (name -> array) as .npz or .safetensors files, the
format chosen by the file name. A state dict from torch saved with
safetensors.torch.save_file loads here, and the other way round."""
import numpy as np

__all__ = ["save", "load"]


def _format(path):
    name = str(path)
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".safetensors"):
        return "safetensors"
    raise ValueError(f"unknown file type {name!r}: expected a .npz or .safetensors name")


def _safetensors():
    try:
        from safetensors import numpy as st
    except ImportError:
        raise ImportError("reading and writing .safetensors needs the safetensors "
                          "package: pip install 'fastlinear[safetensors]'") from None
    return st


def save(module, path):
    """Writes module.state_dict() (a Linear, a Sequential, or a dict of arrays)."""
    state = module if isinstance(module, dict) else module.state_dict()
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    if _format(path) == "npz":
        np.savez(path, **state)
    else:
        _safetensors().save_file(state, str(path))


def load(path):
    """The state dict in the file, as a dict of numpy arrays (for load_state_dict)."""
    if _format(path) == "npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return _safetensors().load_file(str(path))
