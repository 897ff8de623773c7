"""One sampling request whatever the wire (serving/request.py), the chat transcript (serving/chat.py) and which
pages may use the server (serving/cors.py): pure functions, exact answers."""

import math

import pytest

from kerascharrnn.config import ServeConfig
from kerascharrnn.errors import UserError
from kerascharrnn.sampling_settings import MAX_PENALTY_RANGE, SEED_MAX, SamplingSettings, fold_seed
from kerascharrnn.serving import chat, cors, request
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.vocab import Vocabulary

VOCAB = Vocabulary(tuple("abc .\n"))
CONFIG = ServeConfig(max_start_text=10, max_num_new_chars=100, max_num_samples=6)


def build(**fields):
    fields.setdefault("prompts", ["ab"])
    return request.build(CONFIG, VOCAB, {"max_new": "max_tokens", "penalty_range": "repeat_last_n"}, **fields)


def test_defaults_are_neutral_and_caps_are_the_servers():
    made = build()
    assert made.settings == SamplingSettings() and made.n == 1 and made.stops == () and made.seed is None
    assert made.max_new == 100  # none asked: as many as the server allows
    assert build(max_new=-1).max_new == build(max_new=10**9).max_new == 100 and build(max_new=7).max_new == 7
    assert build(prompts=["abcabcabcabc"]).prompts == ("cabcabcabc",)  # the end of a long prompt: its last 10
    assert build(logprobs=1000).logprobs == VOCAB.size and build(logprobs=0).logprobs == 0
    assert build(seed=-5).seed == fold_seed(-5) and 1 <= fold_seed(-5) <= SEED_MAX and fold_seed(7) != fold_seed(8)
    assert build(stops=["", ".", ".", "\n"]).stops == (".", "\n")  # empty ones mean nothing; each once


@pytest.mark.parametrize("fields,name", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": math.nan}, "temperature"), ({"top_p": 1.01}, "top_p"),
    ({"min_p": 2.0}, "min_p"), ({"typical_p": -1.0}, "typical_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"), ({"frequency_penalty": 9.0}, "frequency_penalty"),
    ({"penalty_range": -2}, "repeat_last_n"), ({"top_k": -1}, "top_k"), ({"n": 0}, "n"), ({"n": 7}, "n"),
    ({"prompts": ["a"] * 4, "n": 2}, "n"), ({"prompts": []}, "prompts"), ({"logprobs": -1}, "logprobs"),
    ({"stops": [str(i) for i in range(request.MAX_STOPS + 1)]}, "stop"),
    ({"stops": ["x" * (request.MAX_STOP_LENGTH + 1)]}, "stop"),
])
def test_one_set_of_bounds_named_as_the_api_names_the_field(fields, name):
    with pytest.raises(ClientError) as error:
        build(**fields)
    assert error.value.status == 400 and error.value.param == name and error.value.message.startswith(name)


@pytest.mark.parametrize("raw,expected", [
    ({"1": 5, "3": -100}, ((1, 5.0), (3, -100.0))),  # OpenAI's: ids as strings
    ([[1, 2.5], [3, False]], ((1, 2.5), (3, -math.inf))),  # llama.cpp's: false bans
    ({"ab": -1}, ((0, -1.0), (1, -1.0))),  # a text: each of its characters
    ({"99": 1, "z": 3}, ()),  # ids and characters the vocabulary lacks are left out
    ({"2": 1000}, ((2, 100.0),)),  # clamped to OpenAI's range
    (None, ()), ({}, ()),
])
def test_logit_bias_in_every_wire_form(raw, expected):
    assert build(logit_bias=raw).settings.logit_bias == expected


@pytest.mark.parametrize("raw", [{"1": "high"}, {"1": True}, [[1]], [1, 2], "abc", {"1": math.inf}, {"1": math.nan}])
def test_a_logit_bias_that_is_not_one_is_a_400(raw):
    with pytest.raises(ClientError) as error:
        build(logit_bias=raw)
    assert error.value.param == "logit_bias"


def test_banning_every_token_is_a_400():
    with pytest.raises(ClientError, match="every token"):
        build(logit_bias={str(i): False for i in range(VOCAB.size)} | {})  # (false in a dict too)


def test_settings_windows():
    assert SamplingSettings(repetition_penalty=1.2).window(1000) == 64  # the default range
    assert SamplingSettings(repetition_penalty=1.2, penalty_range=-1).window(10**6) == MAX_PENALTY_RANGE
    assert SamplingSettings(repetition_penalty=1.2, penalty_range=-1).window(30) == 30  # no longer than the row
    assert SamplingSettings(presence_penalty=0.5, penalty_range=0).window(100) == 0  # range 0: no penalty
    assert SamplingSettings(top_k=5).window(100) == 0


@pytest.mark.parametrize("prompt,expected", [
    ("<fim_prefix>def f():\n    return<fim_suffix>\n\nprint(f())<fim_middle>", "def f():\n    return"),
    ("<file_sep>a.py\nx = 1<fim_prefix>It was<fim_suffix> night.<fim_middle> a dark", "It was a dark"),
    ("<|fim_prefix|>Once upon<|fim_suffix|> end.<|fim_middle|>", "Once upon"),
    ("<PRE> Once upon a time <SUF> happily. <MID>", "Once upon a time"),
    ("<\uff5cfim\u2581begin\uff5c>Once<\uff5cfim\u2581hole\uff5c>end<\uff5cfim\u2581end\uff5c>", "Once"),
    ("[SUFFIX] the end.[PREFIX]Once upon a", "Once upon a"),
    ("plain text with <fim_prefix> but no markup", None),
    ("<PRE> a <SUF>", None),
])
def test_fill_in_the_middle_markup_becomes_the_text_before_the_gap(prompt, expected):
    assert request.without_fill_in_the_middle(prompt) == expected
    assert request.continued(prompt) == (prompt if expected is None else expected)


def test_chat_transcript_and_the_next_speakers_turn():
    prompt, stops = chat.transcript([("system", "", "Be brief."), ("user", "", "Hello"), ("assistant", "", "Hi."),
                                     ("user", "Ann", "Go on")])
    assert prompt == "Be brief.\n\nUser: Hello\n\nAssistant: Hi.\n\nAnn: Go on\n\nAssistant: "
    assert stops == ["\nAnn:", "\nAssistant:", "\nUser:"]
    continued, _ = chat.transcript([("user", "", "Write"), ("assistant", "", "Once upon")])
    assert continued == "User: Write\n\nAssistant: Once upon"  # the assistant's message is continued
    assert chat.message_text([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}},
                              {"type": "text", "text": "b"}], "m") == "a\nb"
    with pytest.raises(ClientError):
        chat.transcript([])
    with pytest.raises(ClientError, match="role"):
        chat.transcript([("wizard", "", "x")])
    with pytest.raises(ClientError):
        chat.message_text(5, "messages.0.content")


# --- which pages may use the model --------------------------------------------------------------------


@pytest.mark.parametrize("origin,allowed", [
    ("http://localhost:3000", True), ("http://127.0.0.1:8000", True), ("https://127.3.4.5", True),
    ("http://[::1]:5173", True), ("http://writer.localhost:8080", True), ("HTTP://LOCALHOST:1", True),
    ("app://obsidian.md", True), ("vscode-webview://abc", True), ("chrome-extension://abcdef", True),
    ("null", False), ("http://127.0.0.1.attacker.example", False), ("http://localhost.attacker.example", False),
    ("https://attacker.example", False), ("http://192.168.1.20:8000", False), ("http://0x7f.1", False),
    ("http://127.0.0.1:8000/path", False), ("file://", False), ("", False), ("http://[::1", False),
])
def test_the_default_answers_pages_on_this_machine_only(origin, allowed):
    assert cors.OriginPolicy.parse("local", keyed=False).allows(origin) is allowed


def test_pages_opened_from_a_file_need_the_key_or_null():
    assert not cors.OriginPolicy.parse("local", keyed=False).allows("null")
    assert cors.OriginPolicy.parse("local", keyed=True).allows("null")
    assert cors.OriginPolicy.parse("local,null", keyed=False).allows("null")
    assert not cors.OriginPolicy.parse("none", keyed=True).allows("null")  # narrowed: not even with the key
    assert not cors.OriginPolicy.parse("none", keyed=False).allows("http://localhost:3000")


def test_listed_origins_any_port_and_everything():
    policy = cors.OriginPolicy.parse("https://writer.example, http://192.168.1.20:*", keyed=False)
    assert policy.allows("https://writer.example") and policy.allows("http://192.168.1.20:8000")
    assert not policy.allows("http://writer.example") and not policy.allows("http://192.168.1.200:80")
    assert not policy.allows("http://192.168.1.20:80x") and not policy.allows("http://localhost:1")  # no `local`
    assert cors.OriginPolicy.parse("*", keyed=False).allows("https://anything.example")
    assert cors.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080") and not cors.same_origin("null", "")


@pytest.mark.parametrize("setting", ["writer.example", "http://x.example/path", "ftp//x", "none,local", "http://"])
def test_a_cors_setting_that_names_no_origin_is_one_clear_error(setting):
    with pytest.raises(UserError):
        cors.OriginPolicy.parse(setting, keyed=False)
