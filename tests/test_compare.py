"""The comparison command (jaxhead.compare): the method list, its errors, and the whole
orchestration (train each method in its own workdir, one report, reuse on a rerun, a failing
method reported while the others run) with a stand-in trainer that writes a generator per
method (the real trainer is covered by the training tests; a train step per method would cost
minutes here) and the real evaluation on cheap metrics."""

import json
import math

import pytest
from train_testlib import override

from configs import compare as compare_config
from configs import compare_demo
from jaxhead import compare, losses
from jaxhead.errors import DataError, MissingWeightsError, UsageError
from jaxhead.evaluation import assets


def test_parse_overrides_types_and_errors():
    got = compare.parse_overrides(" objective=sds ; batch_size=2; objective_kw.t_range=(0.5, "
                                  "0.98);single.mirror=False; terms.nada.source=Photo of x;")
    assert got == {"objective": "sds", "batch_size": 2, "objective_kw.t_range": (0.5, 0.98),
                   "single.mirror": False, "terms.nada.source": "Photo of x"}
    assert compare.parse_overrides("") == {}
    with pytest.raises(UsageError, match="FIELD=VALUE"):
        compare.parse_overrides("objective")
    with pytest.raises(UsageError, match="twice"):
        compare.parse_overrides("a=1; a=2")


def test_method_list_errors_name_the_problem():
    with pytest.raises(UsageError) as e:
        compare.parse_methods({"ld": "", "mine": "objective=sdss"})
    msg = str(e.value)
    assert "methods.mine" in msg and "'sdss'" in msg
    assert all(name in msg for name in losses.OBJECTIVES)  # the registered ones are listed
    with pytest.raises(UsageError, match="steps"):
        compare.parse_methods({"long": "steps=5"})  # the budget is the same for all
    with pytest.raises(UsageError, match="seed"):
        compare.parse_methods({"other_ids": "seed=3"})  # so are the identities
    for bad in ("frozen", "report", "1st", "a b"):
        with pytest.raises(UsageError, match="method name"):
            compare.parse_methods({bad: ""})
    with pytest.raises(UsageError, match=r"\['nope'\] not among"):
        compare.parse_methods({"ld": "", "sds": "objective=sds"}, only="sds,nope")
    assert list(compare.parse_methods({"ld": "", "sds": "objective=sds"}, only="sds,ld")) == [
        "sds", "ld"]
    c = compare_demo.get_config()
    c.methods.ld = "optimizer.lrr=1.0"
    with pytest.raises(UsageError, match="methods.ld: unknown training config field "
                                         "'optimizer.lrr'"):
        compare.validate(c)
    c.methods.ld = "terms.relative_distance.weight=1.0"  # needs 2 identities per batch
    with pytest.raises(UsageError, match="methods.ld: invalid config.*batch_size >= 2"):
        compare.validate(c)


def test_compare_config_has_a_valid_row_per_registered_objective(tmp_path):
    """configs/compare.py: the paper's rows and every registered objective, each a valid
    training config with the fixed budget and its own workdir, in the order written."""
    c = compare_config.get_config()
    methods, cfgs = compare.validate(c)
    assert list(methods)[:4] == ["ld", "sds", "sds_rd", "nada"]
    objectives = {cfgs[n].objective for n in cfgs}
    assert set(losses.OBJECTIVES) <= objectives
    assert cfgs["sds_rd"].terms.relative_distance.weight > 0 and cfgs["sds_rd"].batch_size == 2
    assert cfgs["nada"].terms.nada.weight > 0 and cfgs["nada"].single.base_weight == 0
    assert {cfgs[n].steps for n in cfgs} == {c.steps}
    assert {cfgs[n].seed for n in cfgs} == {c.train.seed}
    assert len({cfgs[n].workdir for n in cfgs}) == len(cfgs)
    # missing weights: every piece once, before anything is trained
    c.train.models.generator = c.train.models.sd = str(tmp_path / "none")
    _, cfgs = compare.validate(c)
    missing = compare.missing_weights(c, cfgs)
    assert sum("PanoHead generator" in m for m in missing) == 1
    assert any("terms.nada" in m and "(for the methods nada)" in m for m in missing)
    trainer = StandInTrainer()
    with pytest.raises(MissingWeightsError, match="missing inputs of the comparison"):
        compare.compare(c, train_fn=trainer, verbose=False)
    assert trainer.calls == []


# --- the whole command with a stand-in trainer ---------------------------------------------


class StandInTrainer:
    """Writes the demo generator perturbed by ``optimizer.lr`` (a method's own setting) as the
    method's trained generator, recording the configs it was given; ``fail`` names methods
    whose training raises."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, config, workdir):
        name = workdir.name
        self.calls.append((name, config))
        if name in self.fail:
            raise RuntimeError(f"{name} blew up")
        g = assets.load_generator_spec(f"demo:{config.optimizer.lr}")
        g.G.save(workdir / "generator", g.params)
        return workdir / "generator"


def _config(tmp_path, **over):
    c = compare_demo.get_config()
    c.workdir = str(tmp_path / "cmp")
    c.steps = 3
    c.methods = {"weak": "optimizer.lr=0.1", "strong": "optimizer.lr=0.4; objective=sds",
                 "broken": "objective=csd"}
    c.eval.identities = "seeds:0-1"
    c.eval.views.yaw = (0.4,)  # one view: the renders dominate the test's time
    c.eval.views.pitch = (0.0,)
    c.eval.views.batch = 1
    c.eval.metrics = ("id", "depth")  # no SD edits, Inception or CLIP: seconds
    c.eval.sheet_identities = 0
    c.compilation_cache = ""
    return override(c, **over)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    trainer = StandInTrainer(fail={"broken"})
    res = compare.compare(_config(tmp), train_fn=trainer, verbose=False)
    return tmp, trainer, res


def test_each_method_trains_once_on_the_same_identities_into_its_workdir(first_run):
    tmp, trainer, res = first_run
    assert [n for n, _ in trainer.calls] == ["weak", "strong", "broken"]
    cfgs = dict(trainer.calls)
    assert {c.steps for c in cfgs.values()} == {3}  # the budget
    assert {c.seed for c in cfgs.values()} == {0}  # the same identities
    assert cfgs["weak"].optimizer.lr == 0.1 and cfgs["weak"].objective == "ld"
    assert cfgs["strong"].optimizer.lr == 0.4 and cfgs["strong"].objective == "sds"
    assert {c.workdir for c in cfgs.values()} == {str(tmp / "cmp" / n) for n in cfgs}


def test_one_report_row_per_method_and_the_failure_reported(first_run):
    tmp, _, res = first_run
    st = res["methods"]
    assert st["weak"]["status"] == st["strong"]["status"] == "trained"
    assert st["broken"]["status"] == "failed" and "broken blew up" in st["broken"]["error"]
    m = json.loads((tmp / "cmp" / "report" / "metrics.json").read_text())
    assert list(m["generators"]) == ["frozen", "weak", "strong"]
    assert m["reference"] == "frozen" and m["prompt"] == compare_demo.get_config().train.prompt
    for r in m["generators"].values():
        assert set(r) == {"id", "depth"}
        assert all(math.isfinite(v["value"]) and v["n_identities"] == 2 for v in r.values())
    gen = m["generators"]
    assert gen["frozen"]["id"]["value"] == pytest.approx(1.0, abs=1e-5)
    for metric in ("id", "depth"):  # methods that trained differently score differently
        assert gen["weak"][metric]["value"] != gen["strong"][metric]["value"]
    assert gen["strong"]["depth"]["value"] > gen["weak"]["depth"]["value"] > 0
    report = (tmp / "cmp" / "report" / "report.md").read_text()
    assert "| generator | ID↑ | ΔD↓ |" in report
    assert "| weak |" in report and "| strong |" in report
    assert "| broken | `objective='csd'` | failed: RuntimeError: broken blew up |" in report
    summary = json.loads((tmp / "cmp" / "compare.json").read_text())
    assert summary["methods"]["broken"]["status"] == "failed" and summary["steps"] == 3


def test_rerun_reuses_finished_methods_and_retries_failed_ones(first_run, capsys):
    tmp, _, _ = first_run
    trainer = StandInTrainer(fail={"broken"})
    res = compare.compare(_config(tmp), train_fn=trainer, verbose=True)
    assert [n for n, _ in trainer.calls] == ["broken"]  # the finished ones are reused
    out = capsys.readouterr()
    assert "[1/3] weak: finished earlier, reusing" in out.out
    assert "[3/3] broken: training 3 steps (objective='csd')" in out.out
    assert "[3/3] broken failed: RuntimeError: broken blew up" in out.err
    assert res["methods"]["weak"]["status"] == res["methods"]["strong"]["status"] == "reused"
    first = json.loads((tmp / "cmp" / "report" / "metrics.json").read_text())["generators"]
    assert first["weak"]["id"]["value"] == res["evaluation"]["results"]["weak"]["id"]["value"]
    # a method whose config changed is not reused (the trainer then resumes or refuses by
    # its own rules)
    c = _config(tmp, **{"methods.weak": "optimizer.lr=0.2"})
    _, cfgs = compare.validate(c)
    assert compare.finished(tmp / "cmp" / "weak", cfgs["weak"]) is None
    assert compare.finished(tmp / "cmp" / "strong", cfgs["strong"]) is not None


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = compare.main(["--config", "configs/compare_demo.py",
                         "--config.methods.sds=objective=nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown objective 'nope'" in err[0]
    assert compare.main(["--config", "configs/compare_demo.py", "--config.only=zz"]) == 2
    assert "not among the methods" in capsys.readouterr().err
    assert compare.main(["--config", "configs/compare_demo.py", "--config.steps=0"]) == 2
    assert "steps=0" in capsys.readouterr().err
    assert compare.main(["--config", "configs/compare_demo.py", "--config.methodz.x=1"]) == 2
    assert "configs/compare.py" in capsys.readouterr().err
    # every method failing is a data error, not a report of nothing
    with pytest.raises(DataError, match="every method failed"):
        compare.compare(_config(tmp_path), verbose=False,
                        train_fn=StandInTrainer(fail={"weak", "strong", "broken"}))


def test_empty_selection_and_unwritable_workdir_are_one_line(tmp_path, capsys):
    """``only=,`` selected nothing and reported "every method failed"; an unwritable workdir
    printed each method's traceback: both are one line before any training."""
    code = compare.main(["--config", "configs/compare_demo.py", "--config.only=,",
                         f"--config.workdir={tmp_path / 'cmp'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "only=',' names no method" in err[0], err
    from fs_testlib import disk_full

    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compare.json").write_text("earlier")
    trainer = StandInTrainer()
    with disk_full(0), pytest.raises(DataError, match="cmp' is not writable"):  # as read-only
        compare.compare(_config(tmp_path), verbose=False, train_fn=trainer)
    assert trainer.calls == [] and capsys.readouterr().err == ""
    assert [p.name for p in (tmp_path / "cmp").iterdir()] == ["compare.json"]
    assert (tmp_path / "cmp" / "compare.json").read_text() == "earlier"


@pytest.mark.heavy  # two demo train steps compiled: 6.5 min at load 10 (185 s CPU); -m heavy
def test_real_trainer_two_methods_one_step(tmp_path, capsys):
    """The real trainer behind the comparison: ``ld`` and ``sds`` one grid step each on the
    demo models (the tests' micro config), one report whose rows differ, a rerun that trains
    nothing."""
    from train_testlib import micro_config

    c = _config(tmp_path, steps=1)
    c.train = micro_config(checkpoint_every=1)
    c.methods = {"ld": "", "sds": "objective=sds"}
    res = compare.compare(c, verbose=False)
    assert [s["status"] for s in res["methods"].values()] == ["trained", "trained"]
    r = res["evaluation"]["results"]
    assert list(r) == ["frozen", "ld", "sds"]
    for name in ("ld", "sds"):
        assert json.loads((tmp_path / "cmp" / name / "metrics.jsonl").read_text()
                          .splitlines()[-1])["step"] == 1
        assert all(math.isfinite(v["value"]) for v in r[name].values())
    assert r["ld"]["depth"]["value"] != r["sds"]["depth"]["value"]
    res = compare.compare(c, train_fn=StandInTrainer(fail={"ld", "sds"}), verbose=False)
    assert [s["status"] for s in res["methods"].values()] == ["reused", "reused"]
