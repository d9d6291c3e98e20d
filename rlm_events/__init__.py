"""Guard, steer, meter and observe every stage of `dspy.RLM`'s loop without forking DSPy.

```pycon
>>> import rlm_events
>>> from rlm_events import Stage, signals

```
"""

from . import signals
from .context import (
    ExtractContext,
    PostExecutionContext,
    PostIterationContext,
    PreExecutionContext,
    PreIterationContext,
    Run,
    RunEndContext,
    RunStartContext,
    StageContext,
    ToolCallContext,
    snapshot,
)
from .delivery import flush
from .errors import RLMEventsError, StageError, UnknownCostError, UnknownStageError, UnsupportedDSPyError
from .instrumentation import Instrumentation, instrument, instrumentation_of, uninstrument
from .listeners import isolated
from .pricing import register_prices, registered_prices
from .stages import Stage

__version__ = "0.1.0"

__all__ = [
    "ExtractContext",
    "Instrumentation",
    "PostExecutionContext",
    "PostIterationContext",
    "PreExecutionContext",
    "PreIterationContext",
    "RLMEventsError",
    "Run",
    "RunEndContext",
    "RunStartContext",
    "Stage",
    "StageContext",
    "StageError",
    "ToolCallContext",
    "UnknownCostError",
    "UnknownStageError",
    "UnsupportedDSPyError",
    "flush",
    "instrument",
    "instrumentation_of",
    "isolated",
    "register_prices",
    "registered_prices",
    "signals",
    "snapshot",
    "uninstrument",
]
