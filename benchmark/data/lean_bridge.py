"""Skip the normalisation statistics a TransformerBridge computes for hooks nobody attached.

transformer-lens 4's ``NormalizationBridge`` (LayerNorm and RMSNorm slots of every architecture)
computes the norm's centred input, variance, ``1/√var`` and ``√var`` on every call so that its
``hook_scale`` / ``hook_normalized`` points can fire, even when no hook is attached to them. On its
*native* path (``use_native_layernorm_autograd=True``: BERT, RoBERTa, OPT, every RMSNorm model such
as Llama / SmolLM2) it then throws them away and returns the wrapped Hugging Face module's own
output. Those statistics were the bridge's main overhead in the activation pipeline (profiled on
all-MiniLM-L6-v2: 9 norms × ~9 extra passes over ``[batch, seq, d_model]`` per forward).

:func:`skip_unhooked_norm_statistics` gives each such norm a forward that calls the wrapped module
directly while neither point has a hook, and the bridge's own forward otherwise, so

* outputs are bit-identical (the native path returns ``original_component(x)`` itself);
* ``hook_in`` / ``hook_out`` of the norm, and every other hook of the bridge, fire as before;
* a hook added later to ``hook_scale`` / ``hook_normalized`` (``run_with_cache`` of everything,
  an intervention) is honoured: the check runs on every call.

Norms on the bridge's *python* path (it computes the output itself, e.g. GPT-2's ``ln_1``) and
subclasses that change the computation are left alone: skipping there would change the numbers
at float-rounding level, and a stored activation must mean one computation.
"""

from __future__ import annotations

import logging
import types
from typing import Any

log = logging.getLogger(__name__)


def skip_unhooked_norm_statistics(bridge: Any) -> int:
    """Install the lean forward on every eligible normalisation slot of ``bridge``; returns how many.

    Returns 0 (and changes nothing) when transformer-lens's internals are not the ones this was
    written against, so a newer transformer-lens degrades to its own (slower) path."""
    try:
        from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
    except ImportError:  # pragma: no cover - transformer-lens layout changed
        log.debug("transformer-lens has no NormalizationBridge; normalisation statistics are kept")
        return 0
    count = 0
    for module in bridge.modules():
        if isinstance(module, NormalizationBridge) and _on_native_path(module, NormalizationBridge):
            # object.__setattr__: a bridge component forwards attribute writes to the module it wraps
            object.__setattr__(module, "forward", types.MethodType(_lean_forward, module))
            count += 1
    return count


def _on_native_path(module: Any, base: type) -> bool:
    """True when the bridge returns the wrapped module's own output for unhooked calls."""
    cls = type(module)
    untouched = all(getattr(cls, name, None) is getattr(base, name, None)
                    for name in ("forward", "_hf_autograd_forward_with_hooks", "_python_norm_forward"))
    native = bool(getattr(module, "use_native_layernorm_autograd", False)) or bool(
        getattr(getattr(module, "config", None), "layer_norm_folding", False))
    has_points = all(hasattr(module, name) for name in ("hook_in", "hook_out", "hook_scale", "hook_normalized"))
    return untouched and native and has_points and getattr(module, "original_component", None) is not None


def _lean_forward(self: Any, hidden_states: Any, **kwargs: Any) -> Any:
    """The native path without the statistics, while nothing observes them (see the module doc)."""
    if self.hook_scale.has_hooks() or self.hook_normalized.has_hooks():
        return type(self).forward(self, hidden_states, **kwargs)
    x = self.hook_in(hidden_states)
    result = self.original_component(x)
    if result.dtype != x.dtype:
        result = result.to(x.dtype)
    return self.hook_out(result)
