"""download: fetch the dataset from the first source that delivers a verified copy.

Writes data/raw/<dataset>.npz (the four canonical uint8 arrays) and data/raw/<dataset>.provenance.json
(which source, which files and hashes, when, and why earlier sources failed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.io import write_json
from stages.core.runner import run_stage
from stages.data.catalogue import DATASETS
from stages.data.http import Http
from stages.data.npz import save_npz
from stages.data.sources import fetch_dataset, sources_for


def main() -> None:
    cfg = load_params().data
    spec = DATASETS[cfg.dataset]
    http = Http(cfg.connect_timeout_s, cfg.read_timeout_s, cfg.retries)
    paths.RAW.mkdir(parents=True, exist_ok=True)
    for stale in paths.RAW.glob(".download-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=paths.RAW) as workdir:
        fetched = fetch_dataset(spec, sources_for(cfg), http, Path(workdir))
    timing.lap("load data")
    save_npz(paths.raw_npz(spec.name), fetched.arrays, compress=True)
    write_json(paths.provenance(spec.name), fetched.provenance)
    timing.lap("save outputs")


if __name__ == "__main__":
    run_stage(main)
