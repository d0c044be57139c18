"""replace_linear: every torch.nn.Linear of a model (and every MultiheadAttention's
projections) swapped for fastlinear's, and torch's fused paths that would bypass them
turned off."""
from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Union

from torch import nn

from ._modules import Linear, MultiheadAttention, unsupported

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from .._typing import Backend

__all__ = ["replace_linear"]

# include / exclude: a shell-style pattern, several, or a function (name, module) -> bool
Filter = Union[str, Iterable[str], Callable[[str, nn.Module], bool], None]


def _matcher(spec: Filter, what: str) -> Callable[[str, nn.Module], bool] | None:
    if spec is None:
        return None
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} must be a pattern, a list of patterns or a function "
                        f"(name, module) -> bool, got {spec!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_plain_linear(module: nn.Module) -> bool:
    """An nn.Linear (or a subclass that keeps its forward, as torch's
    NonDynamicallyQuantizableLinear): what fastlinear computes."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _decline_fused_path(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that does nothing. torch's TransformerEncoderLayer takes its
    fused path (torch._transformer_encoder_layer_fwd, which reads the Linear layers'
    weights and computes with torch's kernels) only when no module inside it has a
    forward hook; this one keeps it on the path that calls its modules."""
    return None


def replace_linear(model: nn.Module, *, weight_dtype: DTypeLike | None = None,
                   activations: str | None = None, group_size: int | None = None,
                   include: Filter = None, exclude: Filter = None, inplace: bool = False,
                   backend: Backend = "auto") -> nn.Module:
    """The model with its torch.nn.Linear layers computed by fastlinear: each one whose
    qualified name (as model.named_modules() gives it, e.g. "layers.0.linear1") passes
    the filters becomes a fastlinear.torch.Linear with its weights (converted as
    fastlinear.Linear.from_torch does: weight_dtype "bfloat16", "float16", "int8" or
    "int4" with group_size, or None to keep them; `activations` is passed on to it when
    given). Returns the model: a copy, the original untouched, unless inplace (a model
    that is itself an nn.Linear is returned replaced either way).

    include, exclude: a shell-style pattern (fnmatch: "*" also matches dots, so
    "*.linear1" matches every layer's linear1), a list of them, or a function
    (name, module) -> bool. A layer is replaced when it matches include (None: every
    layer) and does not match exclude.

    A torch.nn.MultiheadAttention is replaced whole by fastlinear.torch.
    MultiheadAttention (its projections through fastlinear, the attention torch's) when
    its two projections, named "<its name>.in_proj" and "<its name>.out_proj", both
    pass the filters and its configuration is one that class takes; otherwise it stays
    torch's, both projections included (it computes with their weights itself).
    Subclasses of nn.Linear with a forward of their own stay torch's.

    torch's fused paths that read the Linear weights instead of calling the modules are
    turned off where a replaced module sits inside them: each TransformerEncoderLayer
    gets a forward pre-hook that does nothing (torch takes its fused path only without
    hooks), and each TransformerEncoder's use_nested_tensor becomes False (its layers
    would get nested tensors). A module shared by several parents is replaced once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    included, excluded = _matcher(include, "include"), _matcher(exclude, "exclude")

    def passes(name: str, module: nn.Module) -> bool:
        return ((included is None or included(name, module))
                and (excluded is None or not excluded(name, module)))

    # What to replace: names in the model given (its copy has the same names)
    names: set[str] = set()
    kept_whole: set[int] = set()  # projections of attention modules left to torch
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            kept_whole.add(id(module.out_proj))
            parts = [f"{name}.{p}" if name else p for p in ("in_proj", "out_proj")]
            if (not unsupported(module) and passes(parts[0], module)
                    and passes(parts[1], module.out_proj)):
                names.add(name)
        elif _is_plain_linear(module) and id(module) not in kept_whole and passes(
                name, module):
            _check_linear(name or "the model", module)
            names.add(name)
    if not inplace:
        model = _copy_sharing(model, names)
    chosen = {id(m) for name, m in model.named_modules() if name in names}

    kw: dict[str, Any] = dict(weight_dtype=weight_dtype, group_size=group_size,
                              activations=activations, backend=backend)
    done: dict[int, nn.Module] = {}

    def convert(module: nn.Module) -> nn.Module:
        if id(module) not in done:
            if isinstance(module, nn.MultiheadAttention):
                done[id(module)] = MultiheadAttention.from_torch(module, **kw)
            else:
                done[id(module)] = Linear.from_torch(module, **kw)  # type: ignore[arg-type]
        return done[id(module)]

    if id(model) in chosen:
        return convert(model)
    for parent in list(model.modules()):
        # every place a child sits, shared ones too (named_children gives each once)
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in chosen:
                setattr(parent, child_name, convert(child))
    _decline_fused_paths(model)
    return model


def _copy_sharing(model: nn.Module, names: set[str]) -> nn.Module:
    """A deep copy of the model that shares the Parameters of the modules named (which
    are replaced: read once, then dropped), unless a module kept also holds them."""
    inside: set[int] = set()
    for name, module in model.named_modules():
        if name in names:
            inside.update(id(m) for m in module.modules())
    kept = {id(p) for m in model.modules() if id(m) not in inside
            for p in m.parameters(recurse=False)}
    memo: dict[int, Any] = {id(p): p for m in model.modules() if id(m) in inside
                            for p in m.parameters(recurse=False) if id(p) not in kept}
    return copy.deepcopy(model, memo)


def _check_linear(name: str, module: nn.Linear) -> None:
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"module '{name}' ({type(module).__name__}) has no weights yet: "
                         f"run the model once before replace_linear")
    if module.weight.device.type != "cpu":
        raise ValueError(f"module '{name}': fastlinear runs on the CPU, its weights are on "
                         f"{module.weight.device}")


def _runs_fastlinear(module: nn.Module) -> bool:
    return any(isinstance(m, (Linear, MultiheadAttention)) for m in module.modules())


def _decline_fused_paths(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _runs_fastlinear(module):
            if _decline_fused_path not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(_decline_fused_path)
        elif isinstance(module, nn.TransformerEncoder) and _runs_fastlinear(module):
            module.use_nested_tensor = False
