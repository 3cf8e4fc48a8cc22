"""Every seed the package derives, in one place.

A prompt's sampling seed depends only on (run seed, step, the prompt's dataset index, training or
validation): not on the batch layout, the number of ranks, or a resume. So the same run gives the
same samples on one process or many, before and after a restart.
"""

from __future__ import annotations

import numpy as np


def prompt_seed(seed: int, step: int, index: int, validation: bool = False) -> int:
    """The sampling seed of prompt `index` at training step `step`.

    Validation uses its own stream, the same at every step (pass step 0), so validations differ
    only by the weights.
    """
    return int(np.random.SeedSequence([seed, int(validation), step, index]).generate_state(1)[0])
