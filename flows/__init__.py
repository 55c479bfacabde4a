"""Prefect flows of GenSAR. Offline, quiet defaults are set before Prefect is imported (the same as
scripts/env.sh; variables already set in the environment win)."""
import os

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
