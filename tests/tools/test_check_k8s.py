"""tools/check_k8s.py finds what it is there to find: the shipped overlays pass, and each kind of
mistake in a rendered manifest is reported. Needs kubectl (it renders the overlays), as CI's
machine image has."""
import copy

import pytest

from tools import check_k8s as ck


@pytest.fixture(scope="module")
def docs():
    return ck.render("cpu")


def find(docs, kind, prefix):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix))


def test_the_shipped_overlays_pass(docs):
    assert ck.check_objects(docs, "1.30.0") == []
    assert ck.check_consistency(docs) == []
    assert ck.check_objects(ck.render("gpu"), "1.30.0") == []


def test_schema_mistakes_are_found(docs):
    bad = copy.deepcopy(docs)
    find(bad, "StatefulSet", "adaptd")["spec"]["replicaz"] = 3  # unknown field: strict schema
    find(bad, "ServiceMonitor", "adaptd")["spec"]["endpoints"][0]["interval"] = "15 seconds"
    found = ck.check_objects(bad, "1.30.0")
    assert any(f.startswith("StatefulSet/adaptd") for f in found), found
    assert any(f.startswith("ServiceMonitor/adaptd") for f in found), found


def test_disagreements_are_found(docs):
    bad = copy.deepcopy(docs)
    sts = find(bad, "StatefulSet", "adaptd")
    sts["spec"]["replicas"] = 4  # the map still names three
    sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20
    sts["spec"]["template"]["spec"]["containers"][0]["args"].append("--no_such_flag=1")
    found = "\n".join(ck.check_consistency(bad))
    assert "owners.map is not the map" in found
    assert "backs up 3 replicas, the StatefulSet has 4" in found
    assert "not a flag of adaptd: '--no_such_flag=1'" in found
    assert "terminationGracePeriodSeconds 20" in found
