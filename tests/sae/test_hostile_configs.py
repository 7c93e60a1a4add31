"""Issue #14, class 4: config values that are expensive or impossible to use.

``1e999``, NaN, 5,000-digit integers or deep nesting in ``cfg.json`` gave a bare OverflowError (or
ValueError, RecursionError) naming no file on the load path ``run`` uses, while ``validate`` printed one
line. One JSON reader with limits (``common.read_json`` / ``parse_json_bytes``) now serves every config
and header, so every path gives the same one line naming the file and the key.
"""

from __future__ import annotations

import json
import os

import pytest

import checkpoint_fixtures as fx
import hostile_checkpoints as hc
from refusals import checkpoint_refusal as refusal
from benchmark.sae.checkpoints import inspect_checkpoint, load_sae
from hang_guard import finishes


# ------------------------------------------------------------------------ class 4: config values
@pytest.mark.parametrize("kind", sorted(hc.HOSTILE_CONFIG_VALUES))
def test_hostile_config_values_give_one_line_in_every_path(tmp_path, kind):
    hc.write_saelens_with_raw_d_in(tmp_path / "s", hc.HOSTILE_CONFIG_VALUES[kind])
    field = "cfg.json" if kind == "deep" else "d_in"
    messages = {refusal(action, "cfg.json", field) for action in (lambda: load_sae(tmp_path / "s"),
                                                                  lambda: inspect_checkpoint(tmp_path / "s"))}
    assert len(messages) == 1  # load (run) and inspect (validate) say the same


@pytest.mark.parametrize("text,field,fragment", [
    ('{"trainer": {"dict_class": "AutoEncoder", "activation_dim": 1e999}}', "trainer.activation_dim", "finite"),
    ('{"trainer": {"dict_class": "AutoEncoder", "dict_size": NaN}}', "trainer.dict_size", "NaN"),
    ('{"trainer": {"dict_class": "AutoEncoder"}, "trainer": {}}', "trainer", "twice"),
    ('{"trainer": {"lm_name": "x", "layer": 1' + "9" * 40 + '}}', "trainer.layer", "digits"),
])
def test_every_format_reads_configs_through_the_same_limits(tmp_path, text, field, fragment):
    folder, _, _ = fx.write_dictionary_learning(tmp_path / "run", "AutoEncoder")
    (folder / "config.json").write_text(text)
    assert fragment in refusal(lambda: load_sae(folder), "config.json", field)


def test_a_config_that_is_not_a_regular_file_is_refused_not_read(tmp_path):
    fx.write_saelens(tmp_path / "s", "standard")
    (tmp_path / "s" / "cfg.json").unlink()
    fifo = tmp_path / "s" / "cfg.json"
    os.mkfifo(fifo)
    refusal(lambda: finishes(lambda: load_sae(tmp_path / "s"), fifos=(fifo,)), "s", "format")  # not a file
    message = refusal(lambda: finishes(lambda: load_sae(tmp_path / "s", format="saelens"), fifos=(fifo,)),
                      "cfg.json", "cfg.json")
    assert "FIFO" in message


def test_config_values_that_parse_fine_still_load(tmp_path):
    _, cfg = fx.write_saelens(tmp_path / "s", "standard")
    cfg["metadata"]["note"] = {"deep": [[[[1.5e300, -0.0, 12345678901234567890]]]]}
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path / "s").d_in == cfg["d_in"]
