"""The steps of a native model (fastlinear._core.Model: a Linear with its epilogue, an
activation, LayerNorm, softmax ...) as records that mirror C's fl_step and fl_epilogue
(src_c/fastlinear.h) field by field. Modules describe themselves as steps with
`_steps(width, dtype)`; fastlinear._runner runs them."""
from typing import NamedTuple

from . import _core


class Epilogue(NamedTuple):
    """fl_epilogue: a Linear's y * scale + shift (a BatchNorm1d fused into it), then its
    activation; an activation step's function."""
    act: int = _core.FL_ACT_NONE  # an fl_act code
    alpha: float = 0.0            # LEAKY_RELU's negative slope
    scale: object = None          # a Linear's only: None, or C-contiguous (N,) arrays
    shift: object = None          # of the model's dtype


class Step(NamedTuple):
    """fl_step; its width follows from the steps before it (the model works it out)."""
    kind: int                     # an fl_step_kind code
    linear: object = None         # LINEAR: a fastlinear._core.PackedWeights
    bias: object = None           # LINEAR: None, or its C-contiguous (N,) array
    ep: Epilogue = Epilogue()     # LINEAR, ACT
    a: object = None              # AFFINE, LAYERNORM: None (LAYERNORM without affine)
    b: object = None              # or C-contiguous (width,) arrays of the model's dtype
    eps: float = 0.0              # LAYERNORM


def fuse(last, step):
    """`last` with `step` taken into its epilogue, or None where it cannot be: an
    activation goes into a Linear without one, an affine step (a BatchNorm1d) into a
    Linear with neither an activation nor an affine step yet."""
    if (last is None or last.kind != _core.FL_STEP_LINEAR
            or last.ep.act != _core.FL_ACT_NONE):
        return None
    if step.kind == _core.FL_STEP_ACT:
        return last._replace(ep=last.ep._replace(act=step.ep.act, alpha=step.ep.alpha))
    if step.kind == _core.FL_STEP_AFFINE and last.ep.scale is None:
        return last._replace(ep=last.ep._replace(scale=step.a, shift=step.b))
    return None

