"""fastlinear.Sequential: a chain of Linear layers and activations, converted from a
torch.nn.Sequential and run without torch."""
import sys

from ._validate import check_keys
from .activations import GELU, ReLU, Tanh
from .linear import Linear

__all__ = ["Sequential"]

# torch module class name -> how to convert one instance
_FROM_TORCH = {
    "ReLU": lambda m, **_: ReLU(),
    "Tanh": lambda m, **_: Tanh(),
    "GELU": lambda m, **_: GELU(m.approximate),
    "Linear": lambda m, **kw: Linear.from_torch(m, **kw),
}

_MODULES = (Linear, ReLU, GELU, Tanh)


def _check_module(i, m):
    """TypeError unless m is one of fastlinear's modules, so that a wrong one fails when
    the Sequential is built rather than at its first call."""
    if isinstance(m, _MODULES):
        return
    kind = type(m).__qualname__
    if type(m).__module__ != "builtins":
        kind = f"{type(m).__module__}.{kind}"
    torch = sys.modules.get("torch")
    hint = ("; fl.Sequential.from_torch(torch.nn.Sequential(...)) converts torch modules"
            if torch is not None and isinstance(m, torch.nn.Module) else "")
    raise TypeError(f"a Sequential holds fastlinear modules "
                    f"({', '.join(c.__name__ for c in _MODULES)}); module {i} is {kind}{hint}")


class Sequential:
    """Calls its modules in order: y = modules[-1](... modules[0](x))."""

    def __init__(self, *modules):
        for i, m in enumerate(modules):
            _check_module(i, m)
        self.modules = list(modules)

    def __call__(self, x):
        for m in self.modules:
            x = m(x)
        return x

    forward = __call__

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, i):
        return self.modules[i]

    @classmethod
    def from_torch(cls, module, *, dtype=None, weight_dtype=None, group_size=None,
                   backend="auto"):
        """From a torch.nn.Sequential of Linear, ReLU, GELU and Tanh modules; dtype,
        weight_dtype and group_size apply to every Linear (see Linear.from_torch)."""
        converted = []
        for i, m in enumerate(module):
            kind = type(m).__name__
            if kind not in _FROM_TORCH:
                raise TypeError(f"cannot convert module {i} ({kind}); supported: "
                                f"{', '.join(sorted(_FROM_TORCH))}")
            converted.append(_FROM_TORCH[kind](m, dtype=dtype, weight_dtype=weight_dtype,
                                               group_size=group_size, backend=backend))
        return cls(*converted)

    def state_dict(self):
        """torch-style keys: '<index>.weight', '<index>.bias' for each Linear."""
        return {f"{i}.{key}": value for i, m in enumerate(self.modules)
                if isinstance(m, Linear) for key, value in m.state_dict().items()}

    def load_state_dict(self, state_dict):
        """Loads '<index>.weight' / '<index>.bias' into each Linear; other keys, or
        missing ones, raise KeyError."""
        check_keys(state_dict, [f"{i}.{key}" for i, m in enumerate(self.modules)
                                if isinstance(m, Linear) for key in m._state_keys()])
        for i, m in enumerate(self.modules):
            if isinstance(m, Linear):
                prefix = f"{i}."
                m.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items()
                                   if k.startswith(prefix)})

    def __repr__(self):
        inner = "".join(f"  ({i}): {m!r}\n" for i, m in enumerate(self.modules))
        return f"Sequential(\n{inner})"
