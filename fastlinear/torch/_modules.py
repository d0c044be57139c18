"""The torch modules: Linear (a fastlinear layer as a torch.nn.Module) and
MultiheadAttention (torch's attention with both projections run by fastlinear)."""
from __future__ import annotations

import math
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import linear as _linear
from . import _op

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from .._typing import Backend

__all__ = ["Linear", "MultiheadAttention"]

# The input dtypes a float32 layer takes: bfloat16 and float16 widen exactly to float32,
# and the result is rounded back to the input's dtype (as torch's own half-precision
# Linear rounds its float32 sums). A float64 layer takes float64 only.
_FLOAT32_INPUTS = (torch.float32, torch.bfloat16, torch.float16)


def _inputs_of(fl_layer: _linear.Linear) -> tuple[torch.dtype, ...]:
    return (torch.float64,) if fl_layer.dtype == np.float64 else _FLOAT32_INPUTS


def check_inference(module: nn.Module, x: Tensor) -> None:
    """Errors for what fastlinear does not do: training, gradients, other devices."""
    if module.training:
        raise RuntimeError(
            f"fastlinear.torch.{type(module).__name__} runs inference only and is in "
            f"training mode: call model.eval() first (torch modules start in training "
            f"mode; eval() also turns Dropout off)")
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"fastlinear.torch.{type(module).__name__} computes no gradients, and autograd "
            f"is recording on an input that requires grad: run the model under "
            f"torch.inference_mode() or torch.no_grad()")
    if not x.is_cpu:
        raise RuntimeError(f"fastlinear runs on the CPU; the input is on {x.device}")


def _tensor(a: np.ndarray) -> Tensor:
    """A numpy array of the stored form as a tensor (bfloat16: the same bits)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _value(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _torch_dtype(module: Any) -> torch.dtype:
    return module.weight.dtype if module.weight.dtype in (
        torch.float64, torch.bfloat16, torch.float16) else torch.float32


class Linear(nn.Module):
    """A fastlinear.Linear as a torch module: y = x @ weight.T + bias for CPU tensors x
    of shape (*, in_features), returned as a tensor of shape (*, out_features). For
    inference only (see below).

    Build one from a torch.nn.Linear with Linear.from_torch (or every Linear of a model
    at once with fastlinear.torch.replace_linear), or around a fastlinear.Linear
    (`layer`). `dtype` is the torch dtype of the activations the module stands for:
    that of the nn.Linear it replaces (float32 unless that was float64, bfloat16 or
    float16). Inputs: a float32 layer (every format but float64) takes float32,
    bfloat16 and float16 tensors, widened exactly to float32 (float32 ones are read in
    place, without a copy, where their last dimension is contiguous); the result has
    the input's dtype (bfloat16 and float16 rounded from the float32 result, as torch's
    own half-precision Linear does). A float64 layer takes float64 tensors.

    `weight` and `bias` are new tensors of `dtype` on each access (the values the layer
    computes with, rebuilt from its stored form; exact, except int8/int4 weights of a
    bfloat16/float16 module, rounded to it): torch's own modules read them. Writing into
    them changes nothing; assign a tensor or array to `weight` or `bias` instead (it is
    converted to the stored form and packed). state_dict() keys are torch's: 'weight'
    in the stored form (bfloat16, float16, int8, or int4 as uint8), 'weight_scale' for
    int8 and int4, 'bias'; load_state_dict takes them back (fastlinear.Linear's rules).

    Inference only: a module in training mode, or an input that requires grad while
    autograd records, raises RuntimeError (never a silently missing gradient). The
    module has no Parameters, so optimizers see nothing of it, and .to(), .half(),
    .cuda() leave it as it is.

    The forward pass is the custom operator torch.ops.fastlinear.linear (fastlinear.
    torch._op): torch.compile and torch.export trace it as one node, and it gives the
    same bits as eager mode, where the module calls the same function directly.
    """
    def __init__(self, layer: _linear.Linear, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(layer, _linear.Linear):
            raise TypeError(f"expected a fastlinear.Linear, got {type(layer).__name__} "
                            f"(use Linear.from_torch for a torch.nn.Linear)")
        allowed = _inputs_of(layer)
        dtype = allowed[0] if dtype is None else dtype
        if dtype not in allowed:
            raise TypeError(f"a {layer.dtype} layer stands for a module of dtype "
                            f"{' or '.join(map(str, allowed))}, not {dtype}")
        self.dtype = dtype
        # state_dict keys: "weight" under the module's prefix, or, flat, prefix_weight
        # (a MultiheadAttention's in_proj_weight).
        self._flat_keys = False
        self._set_layer(layer)

    def _set_layer(self, layer: _linear.Linear) -> None:
        self._layer = layer
        self._handle = _op.register(layer)
        self._compute = _op.compute_dtype(layer)
        self._inputs = _inputs_of(layer)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.deepcopy and pickle: the copy's layer is a new object (packed anew), so
        # it gets its own handle.
        super().__setstate__(state)
        self._set_layer(self._layer)

    @classmethod
    def from_torch(cls, module: nn.Linear, *, weight_dtype: DTypeLike | None = None,
                   group_size: int | None = None, activations: str | None = None,
                   backend: Backend = "auto") -> Linear:
        """From a torch.nn.Linear (or anything with its in_features, out_features,
        weight and bias): the weights converted as fastlinear.Linear.from_torch does
        (weight_dtype None keeps float32, float64, bfloat16 and float16), in the
        module's training mode."""
        kwargs: dict[str, Any] = {}
        if activations is not None:  # only where asked: the layer's integer mode
            kwargs["activations"] = activations
        layer = _linear.Linear.from_torch(module, weight_dtype=weight_dtype,
                                          group_size=group_size, backend=backend, **kwargs)
        new = cls(layer, dtype=_torch_dtype(module))
        new.train(bool(getattr(module, "training", False)))
        return new

    # -- what torch's code reads ---------------------------------------------------
    @property
    def layer(self) -> _linear.Linear:
        """The fastlinear.Linear that computes."""
        return self._layer

    @property
    def in_features(self) -> int:
        return self._layer.in_features

    @property
    def out_features(self) -> int:
        return self._layer.out_features

    @property
    def weight_dtype(self) -> str:
        return self._layer.weight_dtype

    @property
    def weight(self) -> Tensor:
        """(out_features, in_features), a new tensor of `dtype` (see the class)."""
        return torch.from_numpy(np.array(self._layer.weight)).to(self.dtype)

    @weight.setter
    def weight(self, value: Any) -> None:
        self._layer.weight = _value(value)

    @property
    def bias(self) -> Tensor | None:
        """(out_features,), a new tensor of `dtype`, or None."""
        b = self._layer.bias
        return None if b is None else torch.from_numpy(np.array(b)).to(self.dtype)

    @bias.setter
    def bias(self, value: Any) -> None:
        self._layer.bias = _value(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("weight", "bias"):  # the properties, whatever the value's type
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- forward -------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        check_inference(self, input)
        if input.dtype not in self._inputs:
            raise TypeError(f"fastlinear.torch.Linear ({self._layer.dtype} layer) takes "
                            f"{', '.join(map(str, self._inputs))} inputs, got {input.dtype}")
        if _op.eager(input):
            return _op.run(self._layer, input, self._compute)
        return _op.linear(input, self._handle)

    # -- state dict ----------------------------------------------------------------
    def _key(self, prefix: str, name: str) -> str:
        return f"{prefix[:-1]}_{name}" if self._flat_keys else prefix + name

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        for name, value in self._layer.state_dict().items():
            destination[self._key(prefix, name)] = _tensor(value)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              local_metadata: Any, strict: bool, missing_keys: list[str],
                              unexpected_keys: list[str], error_msgs: list[str]) -> None:
        if self._flat_keys:  # torch hands a child only the keys under its prefix:
            return           # its parent loads these (_load_keys)
        mine = self._load_keys(state_dict, prefix, missing_keys, error_msgs)
        if strict:  # a module without children: any other key under its prefix
            unexpected_keys.extend(key for key in state_dict
                                   if key.startswith(prefix) and key not in mine)

    def _load_keys(self, state_dict: Mapping[str, Any], prefix: str,
                   missing_keys: list[str], error_msgs: list[str]) -> set[str]:
        """Loads this layer's keys from state_dict (all or none: the missing ones are
        reported); returns them."""
        keys = {name: self._key(prefix, name) for name in self._layer._state_keys()}
        missing = [key for key in keys.values() if key not in state_dict]
        missing_keys.extend(missing)
        if not missing:
            try:
                self._layer.load_state_dict({name: state_dict[key]
                                             for name, key in keys.items()})
            except (KeyError, TypeError, ValueError) as exc:
                where = f" of '{prefix[:-1]}'" if prefix else ""
                error_msgs.append(f"While loading the weights{where}: {exc}")
        return set(keys.values())

    def _get_name(self) -> str:  # the name repr() shows: not torch's Linear
        return "fastlinear.torch.Linear"

    def extra_repr(self) -> str:
        layer = self._layer
        text = (f"in_features={layer.in_features}, out_features={layer.out_features}, "
                f"bias={layer.bias is not None}")
        if layer.weight_dtype != str(self.dtype).replace("torch.", ""):
            text += f", weight_dtype={layer.weight_dtype!r}"
        if layer.group_size:
            text += f", group_size={layer.group_size}"
        if self.dtype != torch.float32:
            text += f", dtype={self.dtype}"
        return text


def _float_mask(mask: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """A mask to add to the scores: a bool mask's True becomes -inf (not attended), a
    float one is added as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be bool or floating point, got {mask.dtype}")
    return mask.to(dtype)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention with both projections run by fastlinear: the
    in-projection (query, key and value in one layer of 3 * embed_dim outputs, as torch
    stores it) and the out-projection are fastlinear.torch.Linear modules (`in_proj`,
    `out_proj`); the attention between them is torch's
    (torch.nn.functional.scaled_dot_product_attention, or, with need_weights, the
    scores, softmax and weighted sum written out as torch's own slow path does).

    Built from a torch module with MultiheadAttention.from_torch (replace_linear does
    it), for the common configuration: the same embedding size for query, key and
    value (kdim = vdim = embed_dim), no add_bias_kv, no add_zero_attn. forward takes
    and returns what torch's does, for batch_first either way and unbatched inputs:
    (attn_output, attn_weights or None), with key_padding_mask, attn_mask (bool or
    float, 2-D or (batch * num_heads, L, S)), need_weights, average_attn_weights and
    is_causal (a hint, as in torch: attn_mask must be given with it).

    Self-attention (query, key and value the same tensor) runs the in-projection once.
    Otherwise each distinct input runs through the whole in-projection and its part is
    kept: cross-attention computes up to three times the in-projection's arithmetic
    (the bits are those of separate projections: outputs do not depend on each other).
    state_dict keys are torch's: in_proj_weight (+ in_proj_weight_scale), in_proj_bias,
    out_proj.weight, out_proj.bias. Inference only, as Linear.
    """

    def __init__(self, in_proj: Linear, out_proj: Linear, num_heads: int, *,
                 batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        embed_dim = out_proj.out_features
        if (in_proj.in_features, in_proj.out_features) != (embed_dim, 3 * embed_dim) or (
                out_proj.in_features != embed_dim):
            raise ValueError(f"in_proj must map embed_dim={embed_dim} to 3 * embed_dim and "
                             f"out_proj embed_dim to itself, got {in_proj} and {out_proj}")
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads "
                             f"{num_heads}")
        # torch's attribute names and values, which torch's modules read (a
        # TransformerEncoderLayer's checks before its fused path, for one)
        self.embed_dim = self.kdim = self.vdim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout  # eval mode only: never applied
        self.batch_first = batch_first
        self._qkv_same_embed_dim = True
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        in_proj._flat_keys = True  # in_proj_weight, in_proj_bias: torch's keys
        self.in_proj = in_proj
        self.out_proj = out_proj

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, *,
                   weight_dtype: DTypeLike | None = None, group_size: int | None = None,
                   activations: str | None = None, backend: Backend = "auto"
                   ) -> MultiheadAttention:
        """From a torch.nn.MultiheadAttention (see the class for the configurations it
        takes; ValueError for the others), its projections converted as Linear.from_torch
        converts a torch.nn.Linear, in the module's training mode."""
        why = unsupported(module)
        if why:
            raise ValueError(f"cannot convert this MultiheadAttention: {why}")
        e = module.embed_dim
        source = types.SimpleNamespace(in_features=e, out_features=3 * e,
                                       weight=module.in_proj_weight, bias=module.in_proj_bias,
                                       training=module.training)
        kw: dict[str, Any] = dict(weight_dtype=weight_dtype, group_size=group_size,
                                  activations=activations, backend=backend)
        new = cls(Linear.from_torch(source, **kw),  # type: ignore[arg-type]
                  Linear.from_torch(module.out_proj, **kw), module.num_heads,
                  batch_first=module.batch_first, dropout=module.dropout)
        new.train(module.training)
        return new

    @property
    def in_proj_weight(self) -> Tensor:
        """(3 * embed_dim, embed_dim): query's, key's and value's rows, a new tensor."""
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self.in_proj.bias

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              local_metadata: Any, strict: bool, missing_keys: list[str],
                              unexpected_keys: list[str], error_msgs: list[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        # in_proj's keys sit beside the module's own (torch's in_proj_weight ...), out
        # of its reach (torch hands a child the keys under its own prefix): loaded here.
        mine = self.in_proj._load_keys(state_dict, prefix + "in_proj.", missing_keys,
                                       error_msgs)
        unexpected_keys[:] = [key for key in unexpected_keys if key not in mine]

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        check_inference(self, query)
        same_qk, same_kv = query is key, key is value
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence, run as a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        batch_first = self.batch_first or not batched
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        if query.shape[-1] != e:
            raise ValueError(f"query has {query.shape[-1]} features, embed_dim is {e}")

        # The projections: one call for self-attention; else each distinct input runs
        # through the whole in-projection and keeps its part (see the class).
        if same_qk and same_kv:
            q, k, v = self.in_proj(query).split(e, dim=-1)
        else:
            q = self.in_proj(query)[..., :e]
            if same_kv:
                k, v = self.in_proj(key)[..., e:].split(e, dim=-1)
            else:
                k = self.in_proj(key)[..., e:2 * e]
                v = self.in_proj(value)[..., 2 * e:]

        def heads(t: Tensor) -> Tensor:  # (N, L, E) or (L, N, E) -> (N, H, L, D), views
            t = t.unflatten(-1, (h, d))
            return t.transpose(1, 2) if batch_first else t.permute(1, 2, 0, 3)

        q, k, v = heads(q), heads(k), heads(v)
        n, tgt_len, src_len = q.shape[0], q.shape[2], k.shape[2]

        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as "
                               "torch.nn.MultiheadAttention); torch.nn.Transformer."
                               "generate_square_subsequent_mask makes one")
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None
        if attn_mask is not None and not causal:
            mask = _float_mask(attn_mask, q.dtype, "attn_mask")
            if mask.dim() == 2 and mask.shape == (tgt_len, src_len):
                mask = mask.view(1, 1, tgt_len, src_len)
            elif mask.dim() == 3 and mask.shape == (n * h, tgt_len, src_len):
                mask = mask.view(n, h, tgt_len, src_len)
            else:
                raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)}: expected "
                                   f"{(tgt_len, src_len)} or {(n * h, tgt_len, src_len)}")
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (n, src_len):
                raise RuntimeError(f"key_padding_mask of shape "
                                   f"{tuple(key_padding_mask.shape)}: expected {(n, src_len)}")
            padding = _float_mask(key_padding_mask, q.dtype,
                                  "key_padding_mask").view(n, 1, 1, src_len)
            mask = padding if mask is None else mask + padding

        weights = None
        if need_weights:  # torch's slow path: scores, softmax, weighted sum
            scores = torch.matmul(q * math.sqrt(1.0 / d), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = torch.matmul(weights, v)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        # (N, H, L, D) -> the input's layout, (N, L, E) or (L, N, E)
        out = (out.transpose(1, 2) if batch_first else out.permute(2, 0, 1, 3)).flatten(-2)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _get_name(self) -> str:
        return "fastlinear.torch.MultiheadAttention"

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, " \
               f"batch_first={self.batch_first}"


def unsupported(module: nn.MultiheadAttention) -> str:
    """Why fastlinear cannot run this MultiheadAttention ('' when it can)."""
    if not module._qkv_same_embed_dim:
        return "kdim or vdim differ from embed_dim (separate projection weights)"
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True"
    if module.add_zero_attn:
        return "add_zero_attn=True"
    if module.in_proj_weight.device.type != "cpu":
        return f"its weights are on {module.in_proj_weight.device}"
    return ""
