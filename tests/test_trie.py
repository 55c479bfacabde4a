import numpy as np
import pytest

from gensar.model.trie import IdentifierTrie


def test_trie_allows_only_valid_continuations():
    trie = IdentifierTrie([[5, 7, 9], [5, 8, 9], [6, 7, 9]], ["a", "b", "c"])
    assert trie.allowed_after([]) == [5, 6]
    assert trie.allowed_after([5]) == [7, 8]
    assert trie.allowed_after([6, 8]) == []
    assert trie.allowed_after([5, 8, 9]) == []                 # complete: nothing follows
    assert trie.item([5, 8, 9]) == "b" and trie.item([5, 8]) is None and trie.item([6, 8, 9]) is None
    assert len(trie) == 3 and trie.depth == 3


def test_trie_rejects_colliding_or_ragged_identifiers():
    with pytest.raises(ValueError, match="names 2 items, e.g. 'x', 'y'"):
        IdentifierTrie([[1, 2], [1, 2]], ["x", "y"])
    with pytest.raises(ValueError, match="one length"):
        IdentifierTrie([[1, 2], [1, 2, 3]], ["x", "y"])


def test_tables_agree_with_the_prefixes_of_the_identifiers():
    """The vectorised tables (one lookup per beam) and the one-prefix walk give, for every prefix of
    every identifier, exactly the continuations the identifiers have; a token outside them leads to
    the dead node, which allows nothing and names no item."""
    rng = np.random.default_rng(0)
    seqs = np.unique(rng.integers(10, 16, size=(200, 3)), axis=0)
    names = [f"i{j}" for j in range(len(seqs))]
    trie = IdentifierTrie(seqs, names)
    expected = {}
    for seq in seqs.tolist():
        for t in range(3):
            expected.setdefault(tuple(seq[:t]), set()).add(seq[t])
    for seq, name in zip(seqs, names):
        node = np.zeros(1, dtype=np.int64)
        for t, tok in enumerate(seq):
            want = sorted(expected[tuple(seq[:t].tolist())])
            assert trie.vocab[t][trie.allowed(t, node[0])].tolist() == want
            assert trie.allowed_after(seq[:t].tolist()) == want
            node = trie.child(t, node, np.searchsorted(trie.vocab[t], [tok]))
        assert trie.leaf_item[node[0]] == name == trie.item(seq.tolist())
    nodes, banned = np.nonzero(~trie.allowed(2, np.arange(trie.n_nodes[2])))     # (node, token) pairs not in the trie
    assert len(nodes) > 0
    dead = trie.child(2, nodes[:1], banned[:1])
    assert dead[0] == trie.dead(3) and trie.leaf_item[dead[0]] is None
    assert not trie.allowed(2, trie.dead(2)).any()                                 # the dead node allows nothing
