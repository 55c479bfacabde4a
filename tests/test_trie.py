import pytest

from gensar.model.trie import IdentifierTrie


def test_trie_allows_only_valid_continuations():
    trie = IdentifierTrie([[5, 7, 9], [5, 8, 9], [6, 7, 9]], ["a", "b", "c"])
    assert trie.allowed_after([]) == [5, 6]
    assert trie.allowed_after([5]) == [7, 8]
    assert trie.allowed_after([6, 8]) == []
    assert trie.item([5, 8, 9]) == "b" and trie.item([5, 8]) is None
    assert len(trie) == 3 and trie.depth == 3


def test_trie_rejects_colliding_identifiers():
    with pytest.raises(ValueError, match="names two items"):
        IdentifierTrie([[1, 2], [1, 2]], ["x", "y"])
