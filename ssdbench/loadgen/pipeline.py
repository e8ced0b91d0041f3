"""`ssdbench submission run`: from nothing to a checked submission tree, in resumable steps.

For each scenario the category requires in the round (`rounds.json`): (Server, unless skipped)
LoadGen's FindPeakPerformance and the performance run at the peak it found times
``peak_margin`` (default 0.95: the peak search uses the same short runs, so the full run confirms
a little below it; 1.0 confirms the peak itself), else the performance run at the settings'
target_qps; the accuracy run and its mAP; the
compliance tests (TEST01, TEST04-A/B, TEST05; the closed division needs them, the open division
may skip them). Then the tree (`submission.build_submission`) and the check (`checker.check_tree`).

Each step writes into ``OUT/steps/<step>/`` and, once its output is complete and valid, an
atomically written marker ``OUT/steps/<step>.done.json`` (what it produced). A rerun of the same
command skips every step whose marker and folder exist, and redoes the others from scratch (a
folder without a marker is what a SIGTERM or a failure left: it is removed first). The settings of
a step are part of its marker: a rerun with other settings is refused by name, not mixed.

At the end: ``OUT/summary.md`` / ``summary.json`` / ``summary.png``, one row per scenario: the
round checker's result and unit (`rules.official_result`), VALID, mAP, each compliance verdict.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssdbench.errors import CliError
from ssdbench.io import atomic_write, atomic_write_text, read_json
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.compliance import run_compliance
from ssdbench.loadgen.rules import official_result, read_detail_log
from ssdbench.loadgen.run import RunInputs, run_loadgen
from ssdbench.loadgen.settings import get_round
from ssdbench.loadgen.submission import Submitter, build_submission
from ssdbench.loadgen.submission_check import check_tree

KINDS = ("find-peak", "performance", "accuracy", "compliance")


@dataclass
class Plan:
    """What the command was asked for (flags as `ssdbench loadgen` takes them)."""

    category: str
    division: str
    org: str
    system: str
    out: Path
    round: str = "v2.0"
    preset: str | None = None
    user_conf: str | None = None
    flags: dict = field(default_factory=dict)
    data: str | None = None
    weights: str | None = None
    model_file: str | None = None
    allow_pickle: bool = False
    system_json: str | None = None
    waive: tuple[str, ...] = ()
    find_peak: bool = True
    peak_margin: float = 0.95  # the performance run at this fraction of the peak (a peak found in short runs)
    compliance: bool = True

    def identity(self) -> dict:
        """The settings a finished step was made with (a rerun must match them)."""
        return {"round": self.round, "preset": self.preset, "user_conf": self.user_conf, "data": self.data,
                "weights": self.weights, "model_file": self.model_file, "peak_margin": self.peak_margin,
                "flags": {k: v for k, v in self.flags.items() if v is not None}}  # fmt: skip


def logged_qps(peak: float) -> float:
    """The peak rounded down to the 6 significant digits LoadGen logs target_qps with (so the
    detail log shows exactly the value that was set)."""
    digits = max(0, 6 - len(str(int(peak))))
    return math.floor(peak * 10**digits) / 10**digits


def scenarios(plan: Plan) -> list[str]:
    """The scenarios the category requires in the round; v0.5 requires none, so its optional ones
    (less MultiStream, whose legacy form LoadGen 6.x does not run)."""
    rnd = get_round(plan.round)
    required, optional = rnd.scenario_lists(plan.category)
    return required or [s for s in optional if not (s == "MultiStream" and rnd.legacy_multistream)]


def step_names(plan: Plan) -> list[str]:
    """The steps in run order: ``<Scenario>-<kind>`` per required scenario, then tree and check."""
    if plan.division == "closed" and not plan.compliance:
        raise CliError("--skip-compliance: the closed division needs the compliance tests")
    names = []
    for scenario in scenarios(plan):
        for kind in KINDS:
            if (kind == "find-peak" and (scenario != "Server" or not plan.find_peak)) or (
                    kind == "compliance" and not plan.compliance):  # fmt: skip
                continue
            names.append(f"{scenario}-{kind}")
    return names + ["tree"]


class Pipeline:
    def __init__(self, plan: Plan, predict=None, say=print):
        self.plan, self.predict, self.say = plan, predict, say
        self.steps = plan.out / "steps"
        self.names = step_names(plan)
        self.spent: list[float] = []

    def folder(self, name: str) -> Path:
        return self.steps / name

    def marker(self, name: str) -> Path:
        return self.steps / f"{name}.done.json"

    def done(self, name: str) -> dict | None:
        """The marker of a finished step (None when the step must run); CliError when it was made
        with other settings."""
        path = self.marker(name)
        if not path.is_file() or not self.folder(name).is_dir():
            return None
        record = read_json(path, "step record")
        if record.get("identity") != self.plan.identity():
            raise CliError(f"{path}: made with other settings ({record.get('identity')}); use another --out "
                           "or remove the folder")  # fmt: skip
        return record

    def run(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        self.steps.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(self.names, 1):
            head = f"[{i}/{len(self.names)}] {name}"
            if (record := self.done(name)) is not None:
                self.say(f"{head}: done earlier, kept ({self.folder(name)})")
                records[name] = record
                self.spent.append(float(record.get("seconds", 0)))  # what it took then: the ETA's basis
                continue
            self.say(f"{head}: running{self.eta(len(self.names) - i + 1)}")
            if self.folder(name).exists():  # what an interrupted run left
                shutil.rmtree(self.folder(name))
            start = time.monotonic()
            result = self.one(name, records)
            self.spent.append(time.monotonic() - start)
            record = {"step": name, "identity": self.plan.identity(), "seconds": round(self.spent[-1], 1), **result}
            atomic_write_text(self.marker(name), json.dumps(record, indent=2) + "\n")
            records[name] = record
            self.say(f"{head}: done in {self.spent[-1]:.1f} s")
        return records

    def eta(self, left: int) -> str:
        if not self.spent:
            return ""
        return f" (ETA {left * sum(self.spent) / len(self.spent):.0f} s for the {left} step(s) left)"

    def settings(self, scenario: str, mode: str, records: dict) -> S.RunSettings:
        flags = dict(self.plan.flags)
        peak = records.get(f"{scenario}-find-peak", {}).get("peak_qps")
        if peak and mode == "performance":
            flags["target_qps"] = logged_qps(peak * self.plan.peak_margin)  # the confirmation run
        return S.resolve(scenario, mode, self.plan.preset, self.plan.user_conf, flags, round=self.plan.round)

    def inputs(self) -> RunInputs:
        """What every run of the plan reads: its dataset and model."""
        return RunInputs(data=self.plan.data, weights=self.plan.weights, model_file=self.plan.model_file,
                         allow_pickle=self.plan.allow_pickle, predict=self.predict)

    def loadgen(self, scenario: str, mode: str, records: dict):
        run = run_loadgen(self.settings(scenario, mode, records), self.folder(f"{scenario}-{mode}"),
                          self.inputs(), verbose=False,
                          command=f"ssdbench submission run (step {scenario}-{mode})")  # fmt: skip
        if mode == "performance" and run.result != "VALID":
            raise CliError(f"{scenario} performance run {run.result}: {'; '.join(run.summary.reasons)} "
                           f"({run.out}); change the settings and rerun")  # fmt: skip
        return run

    def one(self, name: str, records: dict) -> dict:
        if name == "tree":
            return self.tree(records)
        scenario, kind = name.split("-", 1)
        if kind == "find-peak":
            run = run_loadgen(self.settings(scenario, "find-peak", records), self.folder(name),
                              self.inputs(), verbose=False)  # fmt: skip
            if not run.peak_qps:
                raise CliError(f"Server find-peak found no VALID target_qps ({run.out}); lower --qps and rerun")
            return {"peak_qps": run.peak_qps}
        if kind == "performance":
            run = self.loadgen(scenario, "performance", records)
            official = official_result(read_detail_log(run.out / "mlperf_log_detail.txt"), self.plan.round, scenario)
            return {"result": run.result, "value": official.value, "unit": official.unit, "field": official.field}
        if kind == "accuracy":
            run = self.loadgen(scenario, "accuracy", records)
            return {"map": run.map}
        tests = run_compliance(["all"], self.folder(f"{scenario}-performance"), self.folder(name),
                               accuracy_run=self.folder(f"{scenario}-accuracy"),
                               inputs=RunInputs(predict=self.predict, allow_pickle=self.plan.allow_pickle),
                               verbose=False)  # fmt: skip
        extra = read_json(self.folder(name) / "compliance.json", "compliance record").get("ssdbench_checks", {})
        return {"tests": tests, "ssdbench_checks": extra}

    def tree(self, records: dict) -> dict:
        folders = [self.folder(n) for n in self.names if n != "tree" and not n.endswith("find-peak")]
        submitter = Submitter(self.plan.org, self.plan.system, self.plan.division, self.plan.category)
        build_submission(submitter, folders, self.folder("tree"), self.plan.system_json, self.plan.round)
        return {"tree": str(self.folder("tree"))}


def run_submission(plan: Plan, predict=None, say=print) -> tuple[bool, list[dict]]:
    """Run (or resume) every step, check the tree, write the summary; (tree passes, table rows)."""
    pipeline = Pipeline(plan, predict, say)
    records = pipeline.run()
    result = check_tree(pipeline.folder("tree"), plan.round, plan.waive)
    for line in [f"waived: {v}" for v in result.waived] + [f"warning: {w}" for w in result.warnings]:
        say(line)
    for v in result.violations:
        say(f"VIOLATION: {v}")
    rows = table_rows(plan, records, result)
    write_summary(plan.out, rows, result.ok, plan)
    say(format_table(rows))
    say(f"check ({plan.round}): {'PASS' if result.ok else f'FAIL, {len(result.violations)} violation(s)'}; "
        f"tree {pipeline.folder('tree')}; summary {plan.out / 'summary.md'}, {plan.out / 'summary.png'}")
    return result.ok, rows


def table_rows(plan: Plan, records: dict, result) -> list[dict]:
    rows = []
    for scenario in scenarios(plan):
        perf = records.get(f"{scenario}-performance", {})
        tests = records.get(f"{scenario}-compliance", {}).get("tests", {})
        value = result.results.get(f"{plan.system}/{scenario}", perf.get("value"))
        row = {"scenario": scenario, "result": value, "unit": perf.get("unit", ""), "field": perf.get("field", ""),
               "valid": perf.get("result", "-"), "map": records.get(f"{scenario}-accuracy", {}).get("map"),
               "peak_qps": records.get(f"{scenario}-find-peak", {}).get("peak_qps")}  # fmt: skip
        for test in ("TEST01", "TEST04-A", "TEST05"):
            name = "TEST04" if test == "TEST04-A" else test
            row[name] = "-" if test not in tests else ("PASS" if tests[test] else "FAIL")
        rows.append(row)
    return rows


COLUMNS = ("scenario", "result", "unit", "valid", "mAP", "TEST01", "TEST04", "TEST05")


def _cells(row: dict) -> list[str]:
    value = "-" if row["result"] is None else f"{row['result']:.4g}"
    mean_ap = "-" if row["map"] is None else f"{100 * row['map']:.2f}%"
    return [row["scenario"], value, row["unit"], row["valid"], mean_ap, row["TEST01"], row["TEST04"], row["TEST05"]]


def format_table(rows: list[dict]) -> str:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    lines += [" | ".join(_cells(r)) for r in rows]
    return "\n".join(lines)


def write_summary(out: Path, rows: list[dict], ok: bool, plan: Plan) -> None:
    """summary.md (the table), summary.json (rows and verdict), summary.png (the table drawn)."""
    title = f"{plan.system}: {plan.division} {plan.category}, round {plan.round}: check {'PASS' if ok else 'FAIL'}"
    notes = [f"{r['scenario']} result: the round checker's field {r['field']}" for r in rows if r["field"]]
    atomic_write_text(out / "summary.md", f"# {title}\n\n{format_table(rows)}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    atomic_write_text(out / "summary.json", json.dumps({"ok": ok, "title": title, "rows": rows}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.4 * len(rows)))
    ax.axis("off")
    table = ax.table(cellText=[_cells(r) for r in rows], colLabels=COLUMNS, loc="center")
    table.scale(1, 1.4)
    colours = {"PASS": "#c8e6c9", "VALID": "#c8e6c9", "FAIL": "#ffcdd2", "INVALID": "#ffcdd2"}
    for (row, _col), cell in table.get_celld().items():
        if row > 0 and cell.get_text().get_text() in colours:
            cell.set_facecolor(colours[cell.get_text().get_text()])
    ax.set_title(title, fontsize=9)
    atomic_write(out / "summary.png", lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    plt.close(fig)
