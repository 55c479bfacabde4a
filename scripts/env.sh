# Quiet, offline settings for every tool of the pipeline (sourced by the other scripts).
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
# dvc.yaml runs `python -m gensar.stages.<name>`: the project's virtualenv must come first on PATH
[ -d "$PWD/.venv/bin" ] && export PATH="$PWD/.venv/bin:$PATH"
