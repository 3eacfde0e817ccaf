"""``compile=...``: how a run asks for ``torch.compile``, and what the module compiles.

The config accepts the short forms a user types and the full node::

    compile=true                       # torch.compile, mode "default"
    compile=reduce-overhead            # a mode by name (CUDA graphs on a GPU)
    compile.mode=max-autotune compile.fullgraph=false

What is compiled is the model's forward *and* the loss with its penalties (one function), so
inductor fuses across the network's last layer and the loss, and with ``reduce-overhead`` the
whole forward is one CUDA graph (AOTAutograd makes the backward another).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def replays_cuda_graphs(mode: str | None, device_type: str) -> bool:
    """Whether a step compiled in ``mode`` runs as CUDA graphs on ``device_type``: inductor
    records them on a CUDA device only, and elsewhere the mode compiles without them."""
    return device_type == "cuda" and mode in CUDAGRAPH_MODES


def warmup_steps(cudagraphs: bool) -> int:
    """Steps before a compiled step runs at speed: the first compiles; under CUDA graph trees
    the first runs eagerly, the second records the graphs and replay starts at the third."""
    return 3 if cudagraphs else 1


@dataclass(frozen=True)
class CompileOptions:
    """Keyword arguments for ``torch.compile``; ``fullgraph`` by default, so a graph break in
    a hand-written layer is an error rather than a silent slowdown."""

    mode: str = "default"
    fullgraph: bool = True
    dynamic: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cudagraphs(self) -> bool:
        """Whether inductor replays the compiled step as CUDA graphs on a GPU: ``max-autotune``
        turns them on too, and each step must then be marked (``cudagraph_mark_step_begin``)."""
        return self.mode in CUDAGRAPH_MODES


def compile_options(value: Any) -> CompileOptions | None:
    """Normalise the ``compile`` config value; ``None`` means run eagerly.

    Raises ``ValueError`` with the fix for anything else, so a typo in a mode is not a run that
    silently stays eager.
    """
    if value is None or value is False:
        return None
    if value is True:
        return CompileOptions()
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"compile={value!r} is not understood: use compile=true, compile=<mode> or "
            f"compile.mode=<mode> with a mode from {MODES}"
        )
    mode = value.get("mode")
    if mode is None:
        return None
    if mode not in MODES:
        raise ValueError(f"compile.mode={mode!r} is not a torch.compile mode; use one of {MODES}")
    dynamic = value.get("dynamic")
    if dynamic not in (None, True, False):
        raise ValueError(f"compile.dynamic must be true, false or null, got {dynamic!r}")
    return CompileOptions(mode=mode, fullgraph=bool(value.get("fullgraph", True)), dynamic=dynamic)
