import json

import numpy as np
import pytest

from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary


def test_encode_decode_literal_ids():
    vocab = Vocabulary(tuple("helo wrd"))
    ids = vocab.encode("hello world")
    assert ids.tolist() == [0, 1, 2, 2, 3, 4, 5, 3, 6, 2, 7]
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == "hello world"


def test_json_is_torch_rnn_format_with_one_based_ids():
    data = Vocabulary(tuple("ab\n")).to_json_dict()
    assert data["token_to_idx"] == {"a": 1, "b": 2, "\n": 3}
    assert data["idx_to_token"] == {"1": "a", "2": "b", "3": "\n"}


def test_reads_torch_rnn_json_without_encoding_key():
    text_vocab = Vocabulary.from_json_dict({"idx_to_token": {"2": "b", "1": "a"}, "token_to_idx": {"a": 1, "b": 2}})
    assert text_vocab.tokens == ("a", "b") and text_vocab.encoding == "utf-8"
    bytes_vocab = Vocabulary.from_json_dict({"idx_to_token": {"1": "a", "2": "[195]", "3": "[169]"}})
    assert bytes_vocab.is_bytes and bytes_vocab.tokens == (97, 195, 169)
    assert bytes_vocab.encode("aé").tolist() == [0, 1, 2]
    assert bytes_vocab.decode([0, 1, 2]) == "aé"


def test_bytes_vocabulary_json_keys():
    vocab = Vocabulary((104, 195, 169, 10), "bytes")
    data = vocab.to_json_dict()
    assert data["idx_to_token"] == {"1": "h", "2": "[195]", "3": "[169]", "4": "\n"}
    assert Vocabulary.from_json_dict(json.loads(json.dumps(data))) == vocab


def test_unknown_characters_are_named():
    vocab = Vocabulary(tuple("abc"))
    with pytest.raises(UserError, match=r"'x', 'é'"):
        vocab.encode("abxéx")
    assert vocab.unknown("abxéx") == ["x", "é"]


@pytest.mark.parametrize("bad", [
    {}, {"idx_to_token": {"1": "a", "3": "b"}}, {"idx_to_token": {"x": "a"}}, {"idx_to_token": {"1": "ab"}},
    {"idx_to_token": {"1": "a", "2": "a"}},
])
def test_bad_json_rejected(bad):
    with pytest.raises(UserError):
        Vocabulary.from_json_dict(bad)
