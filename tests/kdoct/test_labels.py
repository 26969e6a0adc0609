import pytest

from kdoct.errors import LabelError
from kdoct.labels import CLASS_SETS, class_names, parse_label, parse_labels


def test_class_sets_have_the_documented_order():
    assert class_names("neh3") == ("normal", "drusen", "cnv")
    assert class_names("UCSD4") == ("cnv", "dme", "drusen", "normal")
    assert set(CLASS_SETS) == {"neh3", "ucsd4"}


def test_unknown_class_set_names_the_choices():
    with pytest.raises(LabelError, match=r"unknown class set 'neh5'.*neh3, ucsd4"):
        class_names("neh5")


@pytest.mark.parametrize("raw", ["CNV", "cnv", " Cnv ", "cNv"])
def test_labels_parse_case_insensitively(raw):
    assert parse_label(raw, class_names("neh3")) == "cnv"


def test_unknown_label_is_named():
    with pytest.raises(LabelError, match=r"'DME'.*normal, drusen, cnv"):
        parse_label("DME", class_names("neh3"))


def test_parse_labels_names_every_unknown_label():
    with pytest.raises(LabelError) as info:
        parse_labels(["NORMAL", "AMD", "cnv", "glaucoma", "AMD"], class_names("neh3"))
    message = str(info.value)
    assert "'AMD'" in message and "'glaucoma'" in message
    assert message.count("'AMD'") == 1
    assert parse_labels(["NORMAL", "Drusen"], class_names("neh3")) == ["normal", "drusen"]
