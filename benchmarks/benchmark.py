"""GenSAR against the baselines and the published numbers: a thin wrapper of gensar.eval.benchmark.

    python benchmarks/benchmark.py --source ../shared/data/office --out benchmarks/out/office [--quick]
    python benchmarks/benchmark.py --source ../shared/data/beauty --out benchmarks/out/beauty \
        --variants "" --set collab.device=cpu          # baselines only

See `python -m gensar.eval.benchmark --help` for every option (variants, baselines, --set overrides).
"""
from gensar.eval.benchmark import main

if __name__ == "__main__":
    main()
