"""The pipeline's stages (one module each) and the code they share."""

import time

STARTED = time.perf_counter()  # imported before anything else a stage imports: see stages/timing.py
