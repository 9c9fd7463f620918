"""The generic SMC engine (layer 2): :func:`init`, :func:`step`, :func:`run` on any Feynman–Kac model.

See :mod:`smcdiff.engine.smc` for the model protocol and an example; :mod:`smcdiff.engine.rejection_control`
for partial rejection control; :mod:`smcdiff.engine.export` for the ArviZ export every result has.
"""

from smcdiff.engine.export import to_arviz
from smcdiff.engine.rejection_control import RejectionControl
from smcdiff.engine.smc import (
    SMCFailedError,
    SMCResult,
    SMCState,
    StepInfo,
    check_model,
    gather,
    init,
    run,
    stack_records,
    step,
)

__all__ = ["SMCState", "StepInfo", "SMCResult", "SMCFailedError", "RejectionControl", "init", "step", "run",
           "gather", "check_model", "stack_records", "to_arviz"]
