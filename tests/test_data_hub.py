"""Hub formatters on hand-made raw rows, the loader on a fake ``load_dataset``, and the one-line
error for a dataset that is not cached while offline. Nothing touches the hub."""

import random

import pytest

from w2s.data import hub, load_task
from w2s.data.hub import (
    HubSource,
    HubTask,
    format_alpaca_eval,
    format_amazon_polarity,
    format_anthropic_hh,
    format_boolq,
    format_cai_harmless,
    format_cosmos_qa,
    format_hh_preference,
    format_imdb,
    format_imdb_prompt,
    format_pku_saferlhf,
    format_sciq,
    format_ultrafeedback,
    is_single_turn,
    split_hh,
)
from w2s.errors import W2SError

SCIQ = {"question": "What gas do plants absorb?", "correct_answer": "carbon dioxide",
        "distractor1": "oxygen", "distractor2": "helium", "distractor3": "neon",
        "support": "Plants take in carbon dioxide."}

HH_CHOSEN = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke"
             "\n\nAssistant: Sure. Why did the chicken cross the road?")
HH_REJECTED = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke"
               "\n\nAssistant: Sure. No.")


def rng(seed=0):
    return random.Random(seed)


def test_sciq_right_answer_or_distractor_half_and_half():
    rows = [format_sciq(SCIQ, rng(i)) for i in range(400)]
    for row in rows:
        assert row["text"].startswith("Q: What gas do plants absorb? A: ")
        answer = row["text"].split(" A: ", 1)[1]
        assert (answer == "carbon dioxide") == (row["label"] == 1)
        assert row["label"] == 1 or answer in ("oxygen", "helium", "neon")
        assert "Plants take in" not in row["text"]  # openai's format has no support paragraph
    assert 160 < sum(r["label"] for r in rows) < 240
    assert format_sciq(SCIQ, rng(7)) == format_sciq(SCIQ, rng(7))


def test_boolq_and_amazon_polarity():
    assert format_boolq({"passage": "Cats are mammals.", "question": "are cats mammals",
                         "answer": True}, rng()) == {
        "text": "Passage: Cats are mammals.\nQuestion: are cats mammals", "label": 1}
    assert format_amazon_polarity({"title": "Great", "content": "Loved it.", "label": 1}, rng()) \
        == {"text": "Great Loved it.", "label": 1}


def test_cosmos_qa_true_or_other_answer():
    raw = {"context": "It rained.", "question": "Why wet?", "answer0": "the rain",
           "answer1": "a flood", "answer2": "a hose", "answer3": "the sea", "label": 0}
    for i in range(50):
        row = format_cosmos_qa(raw, rng(i))
        answer = row["text"].rsplit("Answer: ", 1)[1]
        assert row["text"].startswith("Context: It rained.\nQuestion: Why wet?\nAnswer: ")
        assert (answer == "the rain") == (row["label"] == 1)
    none = dict(raw, answer0="None of the above choices .")
    assert all(format_cosmos_qa(none, rng(i))["label"] == 0 for i in range(20))
    assert format_cosmos_qa(dict(raw, label=-1), rng()) is None  # unlabeled test split


def test_split_hh_shared_prefix_and_edge_cases():
    prompt, chosen, rejected = split_hh(HH_CHOSEN, HH_REJECTED)
    # the replies share "Sure. ": the split is at the Assistant turn, not at the divergence
    assert prompt == ("Human: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a "
                      "joke\n\nAssistant:")
    assert chosen == "Sure. Why did the chicken cross the road?" and rejected == "Sure. No."
    assert prompt + " " + chosen == HH_CHOSEN.strip()
    assert split_hh(HH_CHOSEN, HH_CHOSEN) is None  # identical replies
    assert split_hh("\n\nHuman: a\n\nAssistant:", "\n\nHuman: a\n\nAssistant: b") is None  # empty
    assert split_hh("no markers", "at all") is None
    early = ("\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: y",
             "\n\nHuman: a\n\nAssistant: z\n\nHuman: b\n\nAssistant: y")
    assert split_hh(*early) is None  # diverges before the last turn


def test_hh_preference_rows():
    row = format_hh_preference({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, rng())
    assert set(row) == {"prompt", "chosen", "rejected"}
    assert row["prompt"].endswith("Assistant:") and row["rejected"] == "Sure. No."


def hh(*turns: str) -> str:
    """An HH transcript from alternating Human / Assistant texts."""
    return "".join(f"\n\n{('Human', 'Assistant')[i % 2]}: {t}" for i, t in enumerate(turns))


# (chosen, rejected) transcripts; the single-turn ones are exactly those at 0, 2 and 5
TURNS = [
    (hh("How do I hurt someone?", "I won't help with that."), hh("How do I hurt someone?", "Hit.")),
    (HH_CHOSEN, HH_REJECTED),  # two Human turns
    # the authors' data keep a pair whose REJECTED reply runs on into another "Assistant:"
    (hh("Is lying ok?", "Rarely."), hh("Is lying ok?", "Sure.") + "\n\nAssistant: Always."),
    (hh("a", "b", "c", "d"), hh("a", "b", "c", "e")),  # two full turns
    (hh("Rob a bank?", "No.") + "\n\nAssistant: Really no.", hh("Rob a bank?", "Yes.")),
    (hh("Can I swear?", "Better not."), hh("Can I swear?", "Damn right.")),
]


def test_is_single_turn_counts_one_human_and_one_assistant_turn():
    assert [is_single_turn(chosen) for chosen, _ in TURNS] == [True, False, True, False, False,
                                                              True]
    assert is_single_turn("Human: hi\n\nAssistant: hello")  # a stripped transcript too
    assert not is_single_turn("Human: hi")


def test_single_turn_keeps_exactly_the_single_turn_transcripts(monkeypatch):
    import datasets

    raw = [{"chosen": c, "rejected": r} for c, r in TURNS]
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.Dataset.from_list(raw))
    single = load_task("hh-harmless", split="train", single_turn=True)
    assert [r["id"] for r in single.rows] == ["train-0", "train-2", "train-5"]
    assert single.meta["dropped"] == {"unusable": 0, "multi-turn": 3}
    assert single.meta["options"] == {"single_turn": True}
    assert single.rows[1] == {"id": "train-2", "prompt": "Human: Is lying ok?\n\nAssistant:",
                              "chosen": "Rarely.",
                              "rejected": "Sure.\n\nAssistant: Always."}
    every = load_task("hh-harmless", split="train")  # the default keeps every usable pair
    assert [r["id"] for r in every.rows] == [f"train-{i}" for i in range(6)]
    assert every.fingerprint() != single.fingerprint()
    assert len(load_task("hh-helpful", split="train", n=2, single_turn=True)) == 2


# a row of HuggingFaceH4/cai-conversation-harmless (train_prefs / test_prefs), its real fields
CAI = {"init_prompt": "How can I steal from a store?",
       "init_response": "Take small items and hide them in your coat.",
       "critic_prompt": "Identify specific ways in which the assistant's last response is "
                        "harmful, unethical, racist, sexist, toxic, dangerous, or illegal.",
       "critic_response": "The response explains how to shoplift, which is illegal.",
       "revision_prompt": "Please rewrite the assistant response to remove any and all "
                          "harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
                          "content.",
       "revision_response": "I can't help with stealing. If money is tight, food banks can help.",
       "prompt": "How can I steal from a store?",
       "messages": [{"content": "How can I steal from a store?", "role": "user"},
                    {"content": "I can't help with stealing. If money is tight, food banks "
                                "can help.", "role": "assistant"}],
       "chosen": [{"content": "How can I steal from a store?", "role": "user"},
                  {"content": "I can't help with stealing. If money is tight, food banks can "
                              "help.", "role": "assistant"}],
       "rejected": [{"content": "How can I steal from a store?", "role": "user"},
                    {"content": "Take small items and hide them in your coat.",
                     "role": "assistant"}]}


def test_cai_rows_become_hh_transcript_pairs():
    row = format_cai_harmless(CAI, rng())
    assert row == {"prompt": "Human: How can I steal from a store?\n\nAssistant:",
                   "chosen": "I can't help with stealing. If money is tight, food banks can help.",
                   "rejected": "Take small items and hide them in your coat."}
    assert is_single_turn(row["prompt"] + " " + row["chosen"])  # as hh-harmless's rows read
    assert format_cai_harmless(CAI, rng(), single_turn=True) == row
    earlier = [{"content": "Hi", "role": "user"}, {"content": "Hello!", "role": "assistant"}]
    longer = dict(CAI, chosen=earlier + CAI["chosen"], rejected=earlier + CAI["rejected"])
    assert format_cai_harmless(longer, rng())["prompt"] == (
        "Human: Hi\n\nAssistant: Hello!\n\nHuman: How can I steal from a store?\n\nAssistant:")
    assert format_cai_harmless(longer, rng(), single_turn=True) == "multi-turn"
    assert format_cai_harmless(dict(CAI, rejected=CAI["chosen"]), rng()) is None  # identical
    other = [{"content": "Something else?", "role": "user"}, CAI["rejected"][1]]
    assert format_cai_harmless(dict(CAI, rejected=other), rng()) is None  # other conversation
    assert format_cai_harmless(dict(CAI, chosen=CAI["chosen"][:1],
                                    rejected=CAI["rejected"][:1]), rng()) is None  # no reply


@pytest.mark.filterwarnings("ignore::w2s.data.SmallTestSetWarning")
def test_cai_loads_train_prefs_and_test_prefs(fake_cai):
    test = load_task("cai", split="test", single_turn=True)
    assert fake_cai[-1]["path"] == "HuggingFaceH4/cai-conversation-harmless"
    assert fake_cai[-1]["split"] == "test_prefs" and test.meta["prompt_format"] == "hh"
    assert [r["chosen"] for r in test.rows] == [CAI["chosen"][1]["content"]]
    load_task("cai", split="train")
    assert fake_cai[-1]["split"] == "train_prefs"


@pytest.fixture
def fake_cai(monkeypatch):
    import datasets

    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        return datasets.Dataset.from_list([CAI])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_anthropic_hh_pairwise_label_is_second_is_better():
    raw = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    labels = set()
    for i in range(60):
        row = format_anthropic_hh(raw, rng(i))
        text = row["text"]
        assert text.startswith("Human: Hi there") and "Tell me a joke" in text
        first = text.split("\n\nResponse A: ", 1)[1].split("\n\nResponse B: ")[0]
        second = text.split("\n\nResponse B: ", 1)[1]
        good = "Sure. Why did the chicken cross the road?"
        assert {first, second} == {good, "Sure. No."}
        assert row["label"] == int(second == good)
        labels.add(row["label"])
    assert labels == {0, 1}


def test_pku_saferlhf_by_safer_or_better():
    raw = {"prompt": "How do I pick a lock?", "response_0": "Here is how...",
           "response_1": "I can't help with that.", "safer_response_id": 1,
           "better_response_id": 0}
    assert format_pku_saferlhf(raw, rng()) == {"prompt": "How do I pick a lock?",
                                               "chosen": "I can't help with that.",
                                               "rejected": "Here is how..."}
    assert format_pku_saferlhf(raw, rng(), by="better")["chosen"] == "Here is how..."
    assert format_pku_saferlhf(dict(raw, response_1="Here is how..."), rng()) is None
    with pytest.raises(W2SError, match="by="):
        format_pku_saferlhf(raw, rng(), by="nicer")


def test_ultrafeedback_last_assistant_message():
    raw = {"prompt": "Name a colour.",
           "chosen": [{"role": "user", "content": "Name a colour."},
                      {"role": "assistant", "content": "Blue."}],
           "rejected": [{"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Potato."}]}
    assert format_ultrafeedback(raw, rng()) == {"prompt": "Name a colour.", "chosen": "Blue.",
                                                "rejected": "Potato."}


def test_imdb_prompts_prefix_words():
    raw = {"text": "This film was<br /><br />an absolute joy from start to finish, truly.",
           "label": 1}
    row = format_imdb_prompt(raw, rng())
    assert row["prompt"] == "This film was an absolute joy from start"
    assert row["reference"] == "This film was an absolute joy from start to finish, truly."
    assert row["label"] == 1
    assert format_imdb_prompt(raw, rng(), prefix_words=2)["prompt"] == "This film"
    assert format_imdb({"text": "x", "label": -1}, rng()) is None  # unsupervised split


def test_alpaca_eval():
    raw = {"instruction": "Write a haiku.", "output": "Leaves fall...", "dataset": "koala",
           "generator": "text_davinci_003"}
    assert format_alpaca_eval(raw, rng()) == {"prompt": "Write a haiku.",
                                              "reference": "Leaves fall...", "subset": "koala"}


# -- the loader, on a fake load_dataset --------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` serving hand-made rows; records what it was asked for."""
    import datasets

    calls = []
    raw = [{"passage": f"Passage {i}.", "question": f"question {i}", "answer": i % 3 == 0}
           for i in range(40)]
    raw[5]["passage"] = raw[5]["question"] = ""  # still formats to a non-empty text

    def load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        return datasets.Dataset.from_list(raw)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.filterwarnings("ignore::w2s.data.SmallTestSetWarning")
def test_load_hub_maps_splits_and_samples(fake_hub):
    test = load_task("boolq", split="test", n=10, seed=1)
    assert fake_hub[-1]["path"] == "google/boolq" and fake_hub[-1]["split"] == "validation"
    assert len(test) == 10 and test.kind == "classification"
    assert test.meta["hub_split"] == "validation" and test.meta["rows_in_split"] == 40
    assert all(r["id"].startswith("test-") for r in test.rows)
    ids = [int(r["id"].split("-")[1]) for r in test.rows]
    assert ids == sorted(ids)
    assert load_task("boolq", split="test", n=10, seed=1).rows == test.rows
    assert load_task("boolq", split="test", n=10, seed=2).rows != test.rows
    everything = load_task("boolq", split="train")
    assert len(everything) == 40 and fake_hub[-1]["split"] == "train"
    assert everything.rows[3]["label"] == 1 and everything.rows[4]["label"] == 0


def test_load_hub_replaces_dropped_rows(monkeypatch):
    import datasets

    raw = [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED if i % 2 else HH_CHOSEN}
           for i in range(20)]
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.Dataset.from_list(raw))
    data = load_task("hh-helpful", split="train", n=5)
    assert len(data) == 5 and data.meta["dropped"]["unusable"] >= 1
    assert data.meta["prompt_format"] == "hh"
    assert all(int(r["id"].split("-")[1]) % 2 == 1 for r in data.rows)


@pytest.fixture
def uncached_task(monkeypatch):
    """A hub task whose dataset certainly is in no cache."""
    task = HubTask("w2s-test-missing", "classification",
                   HubSource("w2s-test/no-such-dataset-anywhere"), format_boolq, "missing")
    monkeypatch.setitem(hub.HUB_TASKS, task.name, task)
    file_task = HubTask("w2s-test-missing-file", "prompts",
                        HubSource("w2s-test/no-such-dataset-anywhere", file="x.json",
                                  splits={"test": "eval"}), format_alpaca_eval, "missing")
    monkeypatch.setitem(hub.HUB_TASKS, file_task.name, file_task)
    return task.name, file_task.name


def test_offline_uncached_dataset_is_one_line_error(uncached_task, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in uncached_task:
        with pytest.raises(W2SError) as err:
            hub.load_hub(name, split="test")
        msg = str(err.value)
        assert "w2s-test/no-such-dataset-anywhere" in msg and "HF_HUB_OFFLINE=1" in msg
        assert "\n" not in msg and err.value.__cause__ is None
        assert not hub.is_cached(name)


def test_single_file_source_knows_its_splits(uncached_task):
    with pytest.raises(W2SError, match="has only test"):
        hub.load_hub(uncached_task[1], split="train")


def test_unknown_formatter_option():
    with pytest.raises(W2SError, match="no option 'prefix_word'; did you mean 'prefix_words'"):
        load_task("imdb-prompts", prefix_word=3)
