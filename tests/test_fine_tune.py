"""Fine-tuning across vocabularies (models/transfer.py), the budget's fine-tune plan and early stopping."""

import hashlib
import io
import json
import math
import os
import tarfile

import h5py
import numpy as np
import pytest
from conftest import run_cli, shakespeare_text, shared_file

from kerascharrnn.config import ModelConfig
from kerascharrnn.data.preprocess import preprocess
from kerascharrnn.errors import UserError
from kerascharrnn.models import transfer
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training.loop import validations_since_best
from kerascharrnn.vocab import BYTES, Vocabulary


def test_the_map_keeps_shared_characters_adds_new_ones_from_similar_ones_and_drops_the_rest():
    base = Vocabulary(tuple("abe'-xyz"))
    new = Vocabulary(tuple("éb\u2019aq\u2014"))
    mapping = transfer.vocabulary_map(base, new)
    assert mapping.sources == (2, 1, 3, 0, None, 4)  # é <- e, ’ <- ', — <- -; q has nothing similar
    assert mapping.added == (0, 2, 4, 5) and mapping.similar == {0: 2, 2: 3, 5: 4}
    assert mapping.dropped == ("e", "'", "-", "x", "y", "z") and mapping.mapped == 2 and not mapping.identity
    line = mapping.summary(base, new)
    assert line.startswith("2 characters mapped, 4 added ('é' '’' 'q' '—'; 3 starting from a similar one: 'é'<-'e',")
    assert line.endswith("6 dropped ('e' \"'\" '-' 'x' 'y' 'z')")
    assert transfer.vocabulary_map(base, base).identity


def test_text_and_byte_vocabularies_meet_at_ascii_and_nothing_shared_is_refused():
    text = Vocabulary(tuple("ab\u00e9"))
    raw = Vocabulary((98, 97, 0xC3), BYTES)
    mapping = transfer.vocabulary_map(text, raw)
    assert mapping.sources == (1, 0, None) and mapping.dropped == ("\u00e9",)
    assert transfer.vocabulary_map(raw, text).sources == (1, 0, None)
    with pytest.raises(UserError, match="share no character"):
        transfer.vocabulary_map(Vocabulary(tuple("ab")), Vocabulary(tuple("xy")))


def test_validations_since_best():
    assert validations_since_best([]) == 0
    assert validations_since_best([3.0, 2.0, 2.5, 2.0]) == 2  # a tie is no improvement
    assert validations_since_best([3.0, 1.0]) == 0
    assert validations_since_best([math.nan, math.inf]) == 2
    assert validations_since_best([math.nan, 2.0, math.nan]) == 1


def _randomised(charrnn: CharRNN, seed: int) -> CharRNN:
    """Weights drawn at random, the copy attention's zero output kernel and the biases included, so that
    every weight a vocabulary axis runs through moves the logits."""
    rng = np.random.default_rng(seed)
    charrnn.model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in charrnn.model.get_weights()])
    for layer in charrnn.model.layers:  # batch norm's variance must stay positive
        if layer.name.startswith("batchnorm"):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, mean, np.abs(variance) + 0.5])
    return charrnn


@pytest.mark.parametrize("config", [
    dict(model_type="lstm", num_layers=2, copy_memory=8, copy_reset=0.1),
    dict(model_type="gru", num_layers=1, batchnorm=True, dropout=0.2),
    dict(model_type="rnn", num_layers=2, embedding_dropout=0.1),
], ids=["lstm-copy", "gru-batchnorm", "rnn"])
@pytest.mark.parametrize("new_encoding", ["utf-8", BYTES])
def test_a_fine_tuned_model_starts_predicting_the_shared_characters_as_its_base_did(config, new_encoding):
    base_vocab = Vocabulary(tuple("abcdefgh .xyz"))
    base = _randomised(CharRNN.build(ModelConfig(vocab_size=base_vocab.size, rnn_size=12, wordvec_size=6,
                                                 copy_heads=2, copy_head_size=4, **config), base_vocab, 1), 0)
    text_tokens = "hgfedcba. é\u2014!"
    new_vocab = Vocabulary(tuple(text_tokens) if new_encoding != BYTES else
                           tuple(dict.fromkeys("hgfedcba. ".encode() + "é!".encode())), new_encoding)
    mapping = transfer.vocabulary_map(base.vocab, new_vocab)
    tuned = transfer.fine_tune_start(base, new_vocab, mapping, {"dropout": 0.3, "copy_reset": 0.0}, 1)
    assert tuned.config.vocab_size == new_vocab.size and tuned.vocab == new_vocab
    assert tuned.config.dropout == 0.3 and tuned.config.copy_reset == 0  # the regularisation given, any base's
    text = "abc. hgf daeb.cc"
    base_logits = np.asarray(base.model(base_vocab.encode(text)[None], training=False))[0]
    tuned_logits = np.asarray(tuned.model(new_vocab.encode(text)[None], training=False))[0]
    shared = [(new_id, source) for new_id, source in enumerate(mapping.sources) if new_id not in mapping.added]
    assert len(shared) == 10
    np.testing.assert_allclose(tuned_logits[:, [n for n, _ in shared]], base_logits[:, [b for _, b in shared]],
                               rtol=1e-5, atol=1e-5)
    # an added character: as unlikely as the base's rarest at first; é reads as the e it stands for
    bias = base.model.get_layer("logits").get_weights()[1]
    tuned_bias = tuned.model.get_layer("logits").get_weights()[1]
    assert np.allclose(tuned_bias[list(mapping.added)], bias.min())
    if new_encoding != BYTES:
        embeddings = tuned.model.get_layer("embedding").get_weights()[0]
        base_embeddings = base.model.get_layer("embedding").get_weights()[0]
        np.testing.assert_array_equal(embeddings[text_tokens.index("é")], base_embeddings[base_vocab.tokens.index("e")])
        np.testing.assert_allclose(embeddings[text_tokens.index("!")], base_embeddings.mean(axis=0), rtol=1e-6)


# --- bin/train --init_from across vocabularies ---------------------------------------------------------

def _corpus(root, name, text):
    path = root / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    preprocess(str(path), str(root / f"{name}.h5"), str(root / f"{name}.json"), quiet=True)
    return str(root / f"{name}.h5")


def _writers_text() -> str:
    """Text unlike the base's: other characters (accents, curly quotes, digits), none of the base's 'Z'."""
    text = shakespeare_text()[200_000:230_000].replace("z", "é").replace("Z", "%")
    return text + "\u201cNow,\u201d she said \u2014 42 {times}.\n"


def _record(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_bin_train_fine_tunes_a_base_of_another_vocabulary_and_its_checkpoints_say_where_from(trained, tmp_path):
    h5 = _corpus(tmp_path, "mine", _writers_text())
    tuned = run_cli("train", "--init_from", trained["keras"], "--input_h5", h5, "--checkpoint_name",
                    tmp_path / "cv" / "ft", "--max_iters", 6, "--checkpoint_every", 3, "--batch_size", 4,
                    "--seq_length", 16, "--seed", 1, "--print_every", 0)
    assert tuned.returncode == 0, tuned.stderr
    line = next(line for line in tuned.stdout.splitlines() if line.startswith("--init_from"))
    new_tokens = Vocabulary.load(str(tmp_path / "mine.json")).tokens
    added = [c for c in new_tokens if c not in trained["vocab"].tokens]
    dropped = [c for c in trained["vocab"].tokens if c not in new_tokens]
    assert set("é%\u201c\u201d\u201442{}") <= set(added) and dropped == ["z"]
    assert f"characters mapped, {len(added)} added (" in line and "'é'<-'e'" in line and "1 dropped ('z')" in line
    record = _record(tmp_path / "cv" / "ft_6.json")
    base = record["fine_tuned_from"]
    assert base["path"] == os.path.abspath(trained["keras"]) and base["iteration"] == 40
    assert base["sha256"] == hashlib.sha256(open(trained["keras"], "rb").read()).hexdigest()
    assert base["added"] == added and base["dropped"] == dropped
    assert base["mapped"] + len(base["added"]) == record["model_config"]["vocab_size"]
    # a resumed fine-tune still says where it came from; the model samples the new characters
    resumed = run_cli("train", "--resume_from", tmp_path / "cv" / "ft_6.json", "--max_iters", 9)
    assert resumed.returncode == 0, resumed.stderr
    assert _record(tmp_path / "cv" / "ft_9.json")["fine_tuned_from"] == base
    sampled = run_cli("sample", "--checkpoint", tmp_path / "cv" / "ft_9.json", "--start_text", "\u201cé", "--length",
                      20, "--seed", 1)
    assert sampled.returncode == 0 and sampled.stdout.startswith("\u201cé"), sampled.stderr


def test_a_torch_rnn_t7_base_fine_tunes_on_another_vocabulary(tmp_path):
    t7 = shared_file("data/torch-rnn-shakespeare-2x128.t7")
    h5 = _corpus(tmp_path, "mine", _writers_text())
    tuned = run_cli("train", "--init_from", t7, "--input_h5", h5, "--checkpoint_name", tmp_path / "cv" / "ft",
                    "--max_iters", 4, "--checkpoint_every", 4, "--batch_size", 4, "--seq_length", 16, "--seed", 1)
    assert tuned.returncode == 0, tuned.stderr
    assert "characters mapped" in tuned.stdout and "'é'<-'e'" in tuned.stdout
    record = _record(tmp_path / "cv" / "ft_4.json")
    assert record["fine_tuned_from"]["path"] == t7 and record["fine_tuned_from"]["iteration"] == 14_000
    # the shared characters keep what the base learnt: 4 small steps in, far below a fresh model's ~4.2
    val = record["val_loss_history"][-1]
    assert val < 2.5, val


def test_the_budget_plans_a_fine_tune_and_stops_it_early_keeping_the_best(trained, tmp_path):
    """--preset auto --max_minutes M --init_from BASE: the base's model, the fine-tune recipe, validation every
    epoch of the text; a small text overfitted stops the run, and _best holds the lowest val loss."""
    h5 = _corpus(tmp_path, "mine", _writers_text()[:6_000])
    tuned = run_cli("train", "--preset", "auto", "--max_minutes", 30, "--init_from", trained["keras"], "--input_h5",
                    h5, "--checkpoint_name", tmp_path / "cv" / "ft", "--batch_size", 4, "--seq_length", 32,
                    "--learning_rate", 0.03, "--early_stopping", 2, "--seed", 1)
    assert tuned.returncode == 0, tuned.stderr
    plan = next(line for line in tuned.stdout.splitlines() if line.startswith("--preset auto for 30 minutes"))
    assert "fine-tuning the base model of --init_from (not resized)" in plan and "validated every 37 iterations" in plan
    assert "Early stopping at iteration" in tuned.stdout, tuned.stdout
    assert "lstm 2 x 32" in tuned.stdout and "Measured" not in tuned.stdout  # not resized, nothing measured
    last = _record(tuned.stdout.split("Done: iteration ")[1].split("checkpoint ")[1].split(";")[0])
    assert last["train_config"]["sized_by"] == plan.split(": ", 1)[1]
    assert last["model_config"]["dropout"] == 0.2 and last["model_config"]["rnn_size"] == 32
    assert last["train_config"]["learning_rate"] == 0.03 and last["train_config"]["warmup_iters"] == 20
    history = last["val_loss_history"]
    assert validations_since_best(history) == 2 and last["iteration"] < 30 * 60
    assert _record(tmp_path / "cv" / "ft_best.json")["best_val_loss"] == min(history)
    assert f"the lowest val loss: {tmp_path / 'cv' / 'ft_best.json'}" in tuned.stdout


# --- a base model's corpus: Project Gutenberg books, downloaded once (seeded here, never downloaded) -----

def _gutenberg_file(body: str, number: int) -> str:
    return (f"\ufeffThe Project Gutenberg eBook of Book {number}\r\n\r\nThis eBook is for the use of anyone...\r\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK BOOK {number} ***\r\n\r\n{body}\r\n\r\n"
            f"*** END OF THE PROJECT GUTENBERG EBOOK BOOK {number} ***\r\nSection 1. General Terms of Use\r\n")


def test_a_corpus_of_gutenberg_books_is_their_text_without_the_project_s_wrapping(tmp_path):
    from kerascharrnn.data import corpus

    home = tmp_path / "keras"
    books = home / corpus.GUTENBERG_CACHE
    books.mkdir(parents=True)
    text = shakespeare_text()
    (books / "pg11.txt").write_text(_gutenberg_file(text[:30_000].replace("\n", "\r\n"), 11), encoding="utf-8",
                                    newline="")
    (books / "pg84.txt").write_text(_gutenberg_file(text[30_000:60_000], 84), encoding="utf-8", newline="")
    env = {"KERAS_HOME": str(home)}
    trained = run_cli("train", "--corpus", "gutenberg:84+11", "--max_iters", 2, "--batch_size", 2, "--seq_length",
                      8, "--num_layers", 1, "--rnn_size", 8, "--checkpoint_name", tmp_path / "cv" / "g", env=env)
    assert trained.returncode == 0, trained.stderr
    [joined] = (home / "datasets" / "kerascharrnn").glob("gutenberg-84-2-books-*.txt")
    assert joined.read_text(encoding="utf-8") == text[30_000:60_000] + "\n\n\n" + text[:30_000] + "\n"
    assert _record(tmp_path / "cv" / "g_2.json")["train_config"]["input_h5"].startswith(str(home))
    _assert_held_out(home, "gutenberg-84-2-books-*.h5", len(joined.read_text(encoding="utf-8")))
    for name, message in (("gutenberg:84+x", "book numbers joined by +"), ("gutenbergs", "unknown --corpus"),
                          ("gutenberg:12", "could not fetch Project Gutenberg book 12")):
        refused = run_cli("train", "--corpus", name, "--checkpoint_name", tmp_path / "cv" / "r",
                          env={**env, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    (books / "pg7.txt").write_text("no markers here", encoding="utf-8")
    refused = run_cli("train", "--corpus", "gutenberg:7", env=env)
    assert refused.returncode == 1 and "not a Project Gutenberg plain-text book" in refused.stderr
    (books / "pg8.txt").write_bytes(_gutenberg_file("caf\u00e9", 8)[1:].encode("latin-1"))  # no BOM: not UTF-8
    refused = run_cli("train", "--corpus", "gutenberg:8", env=env)
    assert refused.returncode == 1 and "Project Gutenberg book 8 is not UTF-8 text" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert corpus.gutenberg_books("novels") == corpus.NOVELS and len(set(corpus.NOVELS)) == 20


def _assert_held_out(home, pattern, characters):
    """A base model's corpus keeps 2% each for validation and test (corpus.BASE_CORPUS_HELD_OUT), in a cache file
    of its own."""
    from kerascharrnn.data import corpus

    [h5] = (home / "datasets" / "kerascharrnn").glob(pattern)
    assert corpus.BASE_CORPUS_HELD_OUT == 0.02 and "-held-out-0.02" in h5.name
    with h5py.File(h5, "r") as f:
        assert len(f["val"]) == len(f["test"]) == int(0.02 * characters)
        assert len(f["train"]) + 2 * int(0.02 * characters) == characters


def _npm_package(path, files):
    """A .tgz laid out as npm packs a package: every file under package/."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_state_of_the_union_corpus_is_its_addresses_in_date_order_wrapped_as_prose(tmp_path, monkeypatch):
    from kerascharrnn.data import corpus

    home = tmp_path / "keras"
    (home / "datasets").mkdir(parents=True)
    words = shakespeare_text()[:40_000].split()
    first, second = " ".join(words[:3000]), " ".join(words[3000:6000])
    archive = home / "datasets" / corpus.SOTU_FILE
    monkeypatch.setattr(corpus, "SOTU_SHA256", _npm_package(archive, {
        "README.md": "# sotu", "data/1791_george_washington_n.json": "{}",
        "data/1791_george_washington_n.txt": second + "\n", "data/1790_george_washington_n.txt": f"{first}\x02\n"}))
    env = {"KERAS_HOME": str(home)}
    trained = run_cli("train", "--corpus", "sotu", "--max_iters", 2, "--batch_size", 2, "--seq_length", 8,
                      "--num_layers", 1, "--rnn_size", 8, "--checkpoint_name", tmp_path / "cv" / "s", env=env)
    assert trained.returncode == 0, trained.stderr
    [text] = (home / "datasets" / "kerascharrnn").glob("sotu-*.txt")
    paragraphs = text.read_text(encoding="utf-8").split("\n\n")
    assert [" ".join(p.split()) for p in paragraphs] == [first, second]  # in date order, the stray \x02 dropped
    assert max(map(len, text.read_text(encoding="utf-8").splitlines())) <= corpus.SOTU_WIDTH
    assert _record(tmp_path / "cv" / "s_2.json")["train_config"]["input_h5"].startswith(str(home))
    _assert_held_out(home, "sotu-*.h5", len(text.read_text(encoding="utf-8")))

    for damaged in ("package/README.md", None):  # no addresses in it; not an archive at all (a new hash: rebuilt)
        if damaged:
            monkeypatch.setattr(corpus, "SOTU_SHA256", _npm_package(archive, {"README.md": "# sotu"}))
        else:
            archive.write_bytes(b"<html>a proxy's page</html>")
            monkeypatch.setattr(corpus, "SOTU_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
        refused = run_cli("train", "--corpus", "sotu", "--checkpoint_name", tmp_path / "cv" / "r", env=env)
        assert refused.returncode == 1 and "not the State of the Union package" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    archive.unlink()
    refused = run_cli("train", "--corpus", "sotu", "--checkpoint_name", tmp_path / "cv" / "r",
                      env={**env, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert refused.returncode == 1 and "could not fetch the State of the Union addresses" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.parametrize("damage", [[], {"path": "x"}, {"path": 1, "sha256": "", "iteration": 0, "mapped": 1,
                                                         "added": [], "dropped": []},
                                    {"path": "x", "sha256": "", "iteration": True, "mapped": 1, "added": [],
                                     "dropped": []}])
def test_a_damaged_fine_tuned_from_is_one_line(tmp_path, damage):
    from kerascharrnn.io import checkpoint as ckpt

    record = json.loads(open(os.path.join(os.path.dirname(__file__), "fixtures", "v0.5", "ft_30.json")).read())
    record["fine_tuned_from"] = damage
    path = tmp_path / "ft_30.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="fine_tuned_from"):
        ckpt.read_record(str(path))
