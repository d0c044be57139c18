"""fastlinear inside torch models: the Linear layers of any torch.nn.Module computed by
fastlinear, in eager mode and under torch.compile and torch.export (docs/torch.md).

    import fastlinear as fl
    model = fl.torch.replace_linear(model.eval())        # a copy; or inplace=True
    with torch.inference_mode():
        y = model(x)

Linear              a fastlinear.Linear as a torch module (from_torch(nn.Linear))
MultiheadAttention  torch.nn.MultiheadAttention with its projections by fastlinear
replace_linear      every nn.Linear of a model (and MultiheadAttention) swapped

Every forward runs the custom operator torch.ops.fastlinear.linear (eager mode calls
its function directly). Inference only. `import fastlinear` does not import this module
(nor torch): `fastlinear.torch` does, on first use.
"""
from .. import _optional

_optional.torch("fastlinear.torch")  # without torch: an ImportError saying how to get it

from ._modules import Linear, MultiheadAttention  # noqa: E402
from ._replace import replace_linear  # noqa: E402

__all__ = ["Linear", "MultiheadAttention", "replace_linear"]
