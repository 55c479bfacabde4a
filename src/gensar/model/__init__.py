"""GenSAR's generative model: one T5 that recommends (history -> CID) and searches (query + history -> SID).

    prompts.py    the only place encoder inputs/targets are formatted (behavior tokens, templates)
    tokenizer.py  WordPiece for text + one token per identifier code and behavior
    t5.py         build_model / save_model / load_model (eager attention, ONNX-exportable)
    examples.py   multi-task training examples and evaluation requests (no leakage)
    train.py      the trainer: checkpoints + exact resume, NDCG@10 selection, early stop, DDP
    trie.py       prefix trie of valid identifiers
    generate.py   GenSARModel: constrained beam search, recommend()/search() and batched versions
"""
