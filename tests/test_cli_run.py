"""``maskbank run``'s options reach the flow's parameters: ``--k`` sets the k of the rule that will run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maskbank import cli


@pytest.mark.parametrize(
    ("options", "k", "k_per_class"),
    [
        ([], 25, 5),                                   # defaults
        (["--k", "3"], 25, 3),                         # default rule class_balanced: its k is k_per_class
        (["--k", "7", "--rule", "majority"], 7, 5),
        (["--k", "9", "--rule", "knn_weighted"], 9, 5),
    ],
)
def test_k_applies_to_the_active_rule(captured, tmp_path, options, k, k_per_class):
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017", *options])
    assert out.exit_code == 0, out.output
    retrieve = captured["params"].retrieve
    assert (retrieve.k, retrieve.k_per_class) == (k, k_per_class)


def test_k_follows_the_rule_of_a_params_file(captured, tmp_path):
    params = tmp_path / "run.json"
    params.write_text(json.dumps({"retrieve": {"rule": "majority"}}))
    out = CliRunner().invoke(cli.app, ["run", "--store", str(tmp_path / "s"), "--bank", str(cli.sample_root()), "--bank-split", "train2017",
                                       "--params", str(params), "--k", "11"])
    assert out.exit_code == 0, out.output
    assert (captured["params"].retrieve.k, captured["params"].retrieve.k_per_class) == (11, 5)


def test_retrieval_has_no_device_of_its_own():
    """The run's one ``device`` reaches every stage; a retrieval device in the parameters is refused, not ignored."""
    from pydantic import ValidationError

    from maskbank.flows.params import RetrieveParams, RunParams

    with pytest.raises(ValidationError, match="device"):
        RetrieveParams(device="cuda")
    with pytest.raises(ValidationError, match="device"):
        RunParams.model_validate({"retrieve": {"device": "cpu"}})
