"""How ggml's OpenMP workers wait between the parallel regions of a decode.

ggml's CPU backend runs each graph in a GNU OpenMP parallel region. Between
regions libgomp's workers spin before they sleep: for a long while by default
(GOMP_SPINCOUNT 300,000), for ever under OMP_WAIT_POLICY=active, not at all
under passive. Not spinning costs a wake-up per region; spinning takes the CPU
from the thread that decodes when the machine has other work, and a worker
spinning for ever burns a core while the app waits for a question.

scripts/omp_wait_policy.py measured two short greedy solves on 2 cores
(medians; idle CPU in cores while the app waits):

| machine | model | libgomp default | passive | active | GOMP_SPINCOUNT=10000 |
| --- | --- | ---: | ---: | ---: | ---: |
| idle | 0.5B | 2.17 s | 2.91 s | 2.11 s | 2.29 s |
| idle | 1.5B | 3.94 s | 4.92 s | 4.07 s | 4.09 s |
| 2 busy processes | 0.5B | 12.3 s | 4.5 s | 12.1 s | 7.4 s |
| 2 busy processes | 1.5B | 15.5 s | 8.3 s | 20.6 s | 12.1 s |
| waiting (idle CPU) | | 0.009 | 0.0001 | 1.0 | 0.0001 |

A short spin waits through the gaps inside a decode and sleeps between
decodes: on an idle machine it is as fast as the default (passive is 20-25%
slower) and it burns nothing while the app waits, so it is the default here.
On a machine whose cores are busy with other work passive is faster still:
OMP_WAIT_POLICY=passive (whatever the user set, either variable, wins).
libgomp reads these once, when llama_cpp loads it: call `set_openmp_defaults`
before that.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SHORT_SPIN = "10000"


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return  # the user's choice
    environ["GOMP_SPINCOUNT"] = SHORT_SPIN
