"""Optional packages, imported by the methods that need them (never when fastlinear is
imported), with an error that says how to install them."""


def torch(feature):
    """The torch package, or ImportError naming `feature` and how to get torch."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{feature} needs PyTorch: pip install torch") from None
    return torch


def torch_module(m):
    """The plain torch.nn module that a fastlinear module without parameters stands
    for: its class's first torch name, built from the attributes its torch_args name
    (the converters' declarations, read backwards), in eval mode."""
    nn = torch("to_torch").nn
    cls = type(m)
    return getattr(nn, cls.torch_names[0])(*(getattr(m, a) for a in cls.torch_args)).eval()
