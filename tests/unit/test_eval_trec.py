"""Parsing TREC topics, qrels and collections, including Cranfield's XML forms."""
import gzip
import json
import os

import pytest

from selproxy.evaluation.run import judged_topics, parse_server_timing
from selproxy.evaluation.trec import (
    Topic,
    TrecFormatError,
    number_like_qrels,
    read_collection,
    read_qrels,
    read_topics,
)

CRANFIELD = "/work/shared/data/cranfield"


def write(tmp_path, name, text, newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return str(path)


def test_topics_in_cranfield_xml_form(tmp_path):
    path = write(
        tmp_path,
        "q.xml",
        "<?xml version='1.0' encoding='utf-8' standalone='yes'?>\n<xml>\n"
        "<top>\n<num> 1</num> \n<title>\nwhat similarity laws\nmust be obeyed .\n</title>\n</top>\n"
        "<top>\n<num> 4</num> \n<title>\nheat &amp; slabs\n</title>\n</top>\n</xml>\n",
    )
    assert read_topics(path) == [Topic("1", "what similarity laws must be obeyed ."), Topic("4", "heat & slabs")]
    assert [t.id for t in read_topics(path, ids="ordinal")] == ["1", "2"]


def test_topics_in_classic_sgml_form_with_unclosed_fields(tmp_path):
    path = write(
        tmp_path,
        "topics.301",
        "<top>\n<num> Number: 301\n<title> International Organized Crime\n\n"
        "<desc> Description:\nIdentify organizations.\n\n<narr> Narrative:\nA relevant document...\n</top>\n",
    )
    assert read_topics(path) == [Topic("301", "International Organized Crime")]
    assert read_topics(path, field="desc") == [Topic("301", "Identify organizations.")]


def test_topics_as_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path, "q.tsv", "12\thow do birds fly\n\n13\twhy is the sky blue\n")
    assert read_topics(tsv) == [Topic("12", "how do birds fly"), Topic("13", "why is the sky blue")]
    jsonl = write(tmp_path, "q.jsonl", json.dumps({"_id": "q1", "text": "a b"}) + "\n")
    assert read_topics(jsonl) == [Topic("q1", "a b")]
    bad = write(tmp_path, "q.txt", "no tabs here\n")
    with pytest.raises(TrecFormatError):
        read_topics(bad)


def test_qrels_four_and_three_columns_crlf(tmp_path):
    path = write(tmp_path, "qrels", "1 0 184 1\n1 0 29 2\n40 0 85  3\n2 0 7 0\n", newline="\r\n")
    assert read_qrels(path) == {"1": {"184": 1, "29": 2}, "40": {"85": 3}, "2": {"7": 0}}
    beir = write(tmp_path, "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert read_qrels(beir) == {"q1": {"d1": 1}}
    broken = write(tmp_path, "broken", "1 0 5 1\n1 0 6 x\n")
    with pytest.raises(TrecFormatError):
        read_qrels(broken)


def test_collection_trec_xml_without_root_and_gz(tmp_path):
    text = (
        "<doc>\n<docno>1</docno>\n<title>wing in a\nslipstream .</title>\n<author>b,m.</author>\n"
        "<text>an experimental study\nof a wing .</text>\n</doc>\n"
        "<DOC><DOCNO> FT-2 </DOCNO><TEXT>upper case tags</TEXT></DOC>\n"
    )
    expected = [
        {"_id": "1", "title": "wing in a slipstream .", "text": "an experimental study of a wing ."},
        {"_id": "FT-2", "text": "upper case tags"},
    ]
    assert list(read_collection(write(tmp_path, "docs.xml", text))) == expected
    packed = tmp_path / "docs.xml.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert list(read_collection(str(packed))) == expected
    assert list(read_collection(write(tmp_path, "d.xml", text), fields=["author"])) == [
        {"_id": "1", "author": "b,m."},
        {"_id": "FT-2"},
    ]


def test_collection_jsonl_keeps_fields_in_order(tmp_path):
    lines = [{"_id": "d1", "title": "T", "text": "body", "year": 1999}, {"id": 7, "text": "x"}]
    path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    assert list(read_collection(path)) == [
        {"_id": "d1", "title": "T", "text": "body", "year": 1999},
        {"_id": "7", "text": "x"},
    ]
    assert list(read_collection(path, fields=["text"])) == [{"_id": "d1", "text": "body"}, {"_id": "7", "text": "x"}]


def test_unclosed_doc_is_an_error(tmp_path):
    with pytest.raises(TrecFormatError):
        list(read_collection(write(tmp_path, "d.xml", "<doc><docno>1</docno><text>cut")))


def test_server_timing_parsing():
    values = ['upstream;dur=3.1, queue;dur=0.2', 'rank;desc="MiniLM";dur=12.5', "missedCache"]
    assert parse_server_timing(values) == {"upstream": 3.1, "queue": 0.2, "rank": 12.5}


def test_topics_numbered_like_the_qrels():
    topics = [Topic("1", "a"), Topic("4", "b")]
    assert number_like_qrels(topics, {"1": {}, "2": {}}) == [Topic("1", "a"), Topic("2", "b")]
    assert number_like_qrels(topics, {"1": {}, "4": {}, "9": {}}) == topics  # all judged as numbered
    assert number_like_qrels(topics, {"1": {}, "2": {}, "3": {}}) == topics  # neither fits: leave them


def test_judged_topics_need_a_relevant_judgement():
    topics = [Topic("1", "a"), Topic("2", "b"), Topic("3", "c")]
    qrels = {"1": {"d": 1}, "2": {"d": 0}}
    assert judged_topics(topics, qrels) == [Topic("1", "a")]


@pytest.mark.skipif(not os.path.isdir(CRANFIELD), reason="the shared Cranfield copy is not on this machine")
def test_reads_the_cranfield_collection():
    topics = read_topics(os.path.join(CRANFIELD, "cran.qry.xml"), ids="ordinal")
    qrels = read_qrels(os.path.join(CRANFIELD, "cranqrel.trec.txt"))
    docs = list(read_collection(os.path.join(CRANFIELD, "cran.all.1400.xml")))
    assert len(topics) == 225 and len(docs) == 1400
    assert len(judged_topics(topics, qrels)) == 225
    by_num = read_topics(os.path.join(CRANFIELD, "cran.qry.xml"))
    assert by_num[2].id == "4"
    assert number_like_qrels(by_num, qrels) == topics
    assert topics[2].text.startswith("what problems of heat conduction in composite slabs")
    assert docs[0]["_id"] == "1" and docs[0]["title"].startswith("experimental investigation")
