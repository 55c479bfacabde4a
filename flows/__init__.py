"""Prefect flows of GenSAR. Offline, quiet defaults are set before Prefect is imported (the same as
scripts/env.sh; variables already set in the environment win). PREFECT_HOME defaults to the checkout's
`.prefect/`: a run without a server (a temporary one is started) is recorded in `.prefect/prefect.db`,
where `prefect server start` (after `source scripts/env.sh`) shows it later."""
import os
from pathlib import Path

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_HOME": str(Path(__file__).resolve().parents[1] / ".prefect"),
}.items():
    os.environ.setdefault(_key, _value)
