"""bench_knobs: the sweep's points come from the spec's space (conditional knobs switched on, duplicates trained
once, knobs that need another setting trained with it), and the table's verdicts follow the records. The loss
knobs are read from studies/fat2019.toml, which keeps bce_minmax (the demo specs dropped it on this benchmark)."""
from __future__ import annotations

import json

from benchmarks.bench_knobs import BASE, DEMO_SPEC, points, table
from benchmarks.harness import STUDIES
from search.spec import load_spec

FULL = STUDIES / "fat2019.toml"


def by_name(spec=None):
    return {p.name: p for p in points(spec or load_spec(DEMO_SPEC), base_seeds=2)}


def test_points_cover_the_space_from_the_base():
    spec = load_spec(DEMO_SPEC)
    found = by_name(spec)
    assert [p.seed for p in found.values() if p.knob == BASE] == [0, 1]
    assert "model.width=0.125-s0" not in found  # the base's own value is the base
    assert {"model.width=0.0625-s0", "model.width=0.25-s0"} <= set(found)
    lr = sorted(p.value for p in found.values() if p.knob == "optim.lr")
    assert lr[0] == 3e-4 and lr[-1] == 1e-2 and len(lr) == 5  # a log range: its ends and quarter points
    assert sorted(p.value for p in found.values() if p.knob == "model.dropout") == [0.25, 0.5]  # 0.0 is the base
    for point in found.values():  # every point's config is one the spec accepts, and none is trained twice
        spec.config_for(point.overrides)
    configs = [json.dumps(spec.config_for(p.overrides).flat(), sort_keys=True, default=str)
               for p in found.values() if p.knob != BASE]
    assert len(configs) == len(set(configs))


def test_conditional_knobs_switch_on_what_they_need():
    found = by_name(load_spec(FULL))
    for point in found.values():
        if point.knob == "loss.minmax_weight":
            assert point.overrides["loss.name"] == "bce_minmax"
        if point.knob in ("loss.lsoft_beta",) or point.name == "loss.name=lsoft-s0":
            assert point.overrides["data.use_noisy"] is True  # lsoft relabels noisy clips only
    assert found["optim.schedule=cosine-s0"].overrides == {"optim.schedule": "cosine", "optim.eta_min": 5e-06}
    # bce_minmax at the weight's middle is the same config as the weight's own middle point: trained once
    assert "loss.name=bce_minmax-s0" in found and "loss.minmax_weight=1.0-s0" not in found


def test_points_of_named_knobs_only():
    found = points(load_spec(DEMO_SPEC), base_seeds=1, knobs=["data.sampler"])
    assert [p.name for p in found] == ["base-s0", "data.sampler=class_balanced-s0"]


def record(data, knob, value, seed, test, error=None):
    return {"data": data, "knob": knob, "value": value, "seed": seed, "val": None if error else test + 0.01,
            "test": None if error else test, "error": error}


def test_table_verdicts_follow_the_records():
    spec = load_spec(FULL)
    knobs = ["data.sampler", "model.bn_position", "loss.minmax_weight", "model.activation"]
    records = [record(d, BASE, None, s, t) for d in ("demo", "sampled") for s, t in ((0, 0.70), (1, 0.72))]
    records += [record("demo", "data.sampler", "class_balanced", 0, 0.62),
                record("sampled", "data.sampler", "class_balanced", 0, 0.65),
                record("demo", "model.activation", "sigmoid", 0, 0.55),
                record("sampled", "model.activation", "sigmoid", 0, 0.58),
                record("demo", "model.bn_position", "after", 0, 0.75),
                record("sampled", "model.bn_position", "after", 0, 0.71)]
    weights = [p.value for p in points(spec, 1, ["loss.minmax_weight"]) if p.knob == "loss.minmax_weight"]
    for d in ("demo", "sampled"):
        records += [record(d, "loss.minmax_weight", w, 0, 0.65) for w in weights[:-1]]
        records.append(record(d, "loss.minmax_weight", weights[-1], 0, 0.0, error="NonFiniteLossError: diverged"))
    out = table(records, ["demo", "sampled"], spec, base_seeds=2, knobs=knobs)
    lines = out.splitlines()
    sampler = next(line for line in lines if line.startswith("| `data.sampler` | class_balanced"))
    assert "0.6200 (-0.0900)" in sampler and sampler.endswith("| loses |")
    sigmoid = next(line for line in lines if line.startswith("| `model.activation` | sigmoid"))
    assert sigmoid.endswith("| collapses |")  # more than 0.1 below the base's worst seed on both sets
    bn = next(line for line in lines if line.startswith("| `model.bn_position` | after"))
    assert bn.endswith("| mixed |")  # above the base's best seed on demo, inside its spread on sampled
    diverged = next(line for line in lines if line.startswith(f"| `loss.minmax_weight` | {weights[-1]} "))
    assert "NonFiniteLossError" in diverged and diverged.endswith("| collapses |")
    summary = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in lines if line.count("|") == 4}
    assert summary["`data.sampler`"] == "only loses"
    assert summary["`loss.minmax_weight`"] == f"only loses; collapses at 1 of {len(weights)} points"
    assert summary["`model.activation`"] == "collapses at every point"  # its one trained point; untrained ones left out
    assert "| `model.activation` | prelu" not in out
    assert summary["`model.bn_position`"] == "gains somewhere"
    assert "| (base) demo | 2 seeds | | test 0.7000 to 0.7200, mean 0.7100 |" in out
