"""ssdbench's submission checker: walks ``<division>/<org>/`` trees and names every violation.

The layout and the rules are those of the round's MLPerf submission checker
(tools/submission/submission-checker.py on the round's branch, learnt and written anew here); the
rule ids and what each checks are listed in `ssdbench.loadgen.rules`. Beyond the official
checker: a closed result must be ssd1200_r34 on the 5,000 COCO val 2017 images (the official tool
cannot tell), seeds and query counts are violations (the official tool only logs them), and each
compliance run's detail log must show LoadGen read its audit.config and applied it.
"""

from __future__ import annotations

from pathlib import Path

from ssdbench.loadgen.accuracy import COCO_VAL_IMAGES
from ssdbench.loadgen.compliance import METRICS, compare_accuracy, unexpected_errors
from ssdbench.loadgen.rules import (
    ACC_FILES,
    CLOSED_MODEL,
    IMPL_FIELDS,
    IMPLEMENTATION,
    MAX_ACCURACY_LOG_BYTES,
    MEASURE_FILES,
    MODEL_DIR,
    PERF_FILES,
    STATUSES,
    WAIVABLE,
    CheckResult,
    DetailLog,
    Violation,
    accuracy_lines,
    known_system_fields,
    official_result,
    read_detail_log,
    read_json_file,
    run_rule_violations,
    summary_headline_note,
    system_fields,
)
from ssdbench.loadgen.settings import COMPLIANCE_TESTS, Round, get_round


def check_tree(root: str | Path, round_name: str | None = None, waive=()) -> CheckResult:
    """Check every ``<division>/<org>/`` under ``root`` against round ``round_name`` (default v2.0).

    ``waive``: rule ids (only ``min-duration``, ``min-queries``) reported as waived, not failing.
    """
    bad = [w for w in waive if w not in WAIVABLE]
    if bad:
        raise ValueError(f"cannot waive {', '.join(bad)}; only {', '.join(WAIVABLE)} can be waived")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"submission tree not found: {root}")
    return _Checker(root, get_round(round_name), set(waive)).run()


def _dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


class _Checker:
    def __init__(self, root: Path, rnd: Round, waive: set[str]):
        self.root, self.rnd, self.waive, self.result = root, rnd, waive, CheckResult()
        self.soft = False  # violations become warnings (compliance of an open-division result)

    def bad(self, rule: str, path: Path, message: str) -> None:
        where = str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)
        self.add(Violation(rule, where, message))

    def add(self, violation: Violation) -> None:
        if self.soft:
            self.result.warnings.append(f"{violation} (open division: compliance is not checked by the round's checker)")
            return
        (self.result.waived if violation.rule in self.waive else self.result.violations).append(violation)

    def need(self, folder: Path, names) -> bool:
        """Each of ``names`` is a file in ``folder``; violations for the missing ones."""
        missing = [n for n in names if not (folder / n).is_file()]
        for name in missing:
            self.bad("files", folder / name, "missing")
        return not missing

    def run(self) -> CheckResult:
        divisions = _dirs(self.root)
        if not divisions:
            self.bad("files", self.root, "no division folder (closed/ or open/)")
        for division in divisions:
            if division not in ("closed", "open"):
                self.bad("files", self.root / division, "unknown division (closed or open)")
                continue
            for org in _dirs(self.root / division):
                self.org(self.root / division / org, division)
        return self.result

    def org(self, base: Path, division: str) -> None:
        for part in ("code", "measurements", "results", "systems"):
            if not (base / part).is_dir():
                self.bad("files", base / part, "missing folder")
        for system in _dirs(base / "results"):
            desc = self.system(base, system, division)
            for model in _dirs(base / "results" / system):
                self.model(base, system, model, division, desc.get("system_type", ""))

    def system(self, base: Path, system: str, division: str) -> dict:
        path = base / "systems" / f"{system}.json"
        if not path.is_file():
            self.bad("files", path, "missing system description")
            return {}
        desc = read_json_file(path)
        if desc is None:
            self.bad("system", path, "not a JSON object")
            return {}
        for key in system_fields(self.rnd.name):
            if key not in desc:
                self.bad("system", path, f"required field {key!r} missing")
        known = known_system_fields(self.rnd.name)
        for key in desc:
            if key not in known:
                self.result.warnings.append(f"{path.relative_to(self.root)}: field {key} is unknown to the round's checker")
        if str(desc.get("submitter", "")).lower() != base.name.lower():
            self.bad("system", path, f"submitter {desc.get('submitter')!r}, the folder says {base.name!r}")
        if desc.get("division") != division:
            self.bad("system", path, f"division {desc.get('division')!r}, the folder says {division!r}")
        if str(desc.get("status", "")).lower() not in STATUSES:
            self.bad("system", path, f"status {desc.get('status')!r} is none of {', '.join(STATUSES)}")
        if desc.get("system_type") not in self.rnd.scenarios:
            kinds = ", ".join(self.rnd.scenarios)
            self.bad("system", path, f"system_type {desc.get('system_type')!r} is none of {kinds}")
        return desc

    def model(self, base: Path, system: str, model: str, division: str, category: str) -> None:
        folder = base / "results" / system / model
        if model != MODEL_DIR:
            self.bad("files", folder, f"unknown benchmark {model!r} (ssdbench submits {MODEL_DIR})")
            return
        present = _dirs(folder)
        if division == "closed" and category in self.rnd.scenarios:
            required, optional = self.rnd.scenario_lists(category)
            for scenario in required:
                if scenario not in present:
                    why = f"required {category} scenario {scenario} missing (round {self.rnd.name})"
                    self.bad("scenarios", folder, why)
            for scenario in present:
                if scenario not in required + optional:
                    why = f"{scenario} is not a {category} scenario in round {self.rnd.name}"
                    self.bad("scenarios", folder / scenario, why)
        for scenario in present:
            self.scenario(base, system, scenario, division)

    def scenario(self, base: Path, system: str, scenario: str, division: str) -> None:
        impl = self.measurements(base, system, scenario)
        self.performance(base / "results" / system / MODEL_DIR / scenario / "performance" / "run_1", scenario, system)
        acc = self.accuracy(base / "results" / system / MODEL_DIR / scenario / "accuracy", division)
        if division == "closed":
            self.closed_model(base / "results" / system / MODEL_DIR / scenario, impl, acc)
        compliance = base / "compliance" / system / MODEL_DIR / scenario
        if division == "closed":
            self.compliance(compliance, scenario)
        elif compliance.is_dir():  # checked, but as the round's checker: not required of the open division
            self.soft = True
            try:
                self.compliance(compliance, scenario)
            finally:
                self.soft = False
        else:
            where = compliance.relative_to(self.root)
            self.result.warnings.append(f"{where}: no compliance tests (open division: the round's checker "
                                        "checks compliance for the closed division only)")  # fmt: skip

    def measurements(self, base: Path, system: str, scenario: str) -> dict:
        folder = base / "measurements" / system / MODEL_DIR / scenario
        if not folder.is_dir():
            self.bad("files", folder, "missing measurements folder")
            return {}
        self.need(folder, MEASURE_FILES)
        names = [p.name for p in folder.iterdir() if p.name.startswith(f"{system}_") and p.suffix == ".json"]
        if not names:
            expected = folder / f"{system}_{IMPLEMENTATION}_{scenario}.json"
            self.bad("files", expected, "missing implementation description")
            return {}
        impl_name = names[0][len(system) + 1:].removesuffix(f"_{scenario}.json").removesuffix(".json")
        impl = read_json_file(folder / names[0]) or {}
        for key in IMPL_FIELDS:
            if key not in impl:
                self.bad("files", folder / names[0], f"required field {key!r} missing")
        if not (base / "code" / MODEL_DIR / impl_name).is_dir():
            self.bad("files", base / "code" / MODEL_DIR / impl_name, "missing code folder")
        return impl

    def performance(self, folder: Path, scenario: str, system: str) -> None:
        if not self.need(folder, PERF_FILES):
            return
        detail = self.detail(folder / "mlperf_log_detail.txt")
        if detail is None:
            return
        if detail.get("result_validity") != "VALID":
            reason = detail.get("result_invalid_reason", "")
            self.bad("valid", folder, f"LoadGen result {detail.get('result_validity')}: {reason}".strip())
        if detail.get("effective_scenario") != scenario:
            self.bad("files", folder, f"a {detail.get('effective_scenario')} run in the {scenario} folder")
        where = str(folder.relative_to(self.root))
        for violation in run_rule_violations(detail, self.rnd, scenario, where=where):
            self.add(violation)
        if scenario in METRICS:
            official = official_result(detail, self.rnd.name, scenario)
            if official.value is None:
                self.bad("files", folder, f"no {official.field}: the round's checker reads its result from it")
            else:
                self.result.results[f"{system}/{scenario}"] = official.value
                self.result.units[f"{system}/{scenario}"] = f"{official.unit} ({official.field})"
            if note := summary_headline_note(folder / "mlperf_log_summary.txt", scenario):
                self.result.warnings.append(f"{folder.relative_to(self.root)}/mlperf_log_summary.txt: {note}")

    def detail(self, path: Path, test04: bool = False) -> DetailLog | None:
        """The detail log, with a violation per error message (None when unreadable); a TEST04 run
        may carry LoadGen's early-end error (`compliance.TEST04_EXPECTED_ERROR`)."""
        try:
            detail = read_detail_log(path)
        except ValueError as exc:
            self.bad("files", path, str(exc))
            return None
        for error in unexpected_errors(detail, test04):
            self.bad("detail-errors", path, error)
        return detail

    def accuracy(self, folder: Path, division: str) -> DetailLog | None:
        if not self.need(folder, ACC_FILES):
            return None
        detail = self.detail(folder / "mlperf_log_detail.txt")
        value, digest = accuracy_lines(folder / "accuracy.txt")
        if value is None:
            self.bad("accuracy", folder / "accuracy.txt", "no mAP= line")
        if digest is None:
            self.bad("accuracy", folder / "accuracy.txt", "no hash= line (the hash of the full accuracy log)")
        if division == "closed" and value is not None and value < self.rnd.accuracy_target:
            self.bad("accuracy", folder / "accuracy.txt", f"mAP {value}% < {self.rnd.accuracy_target}% (99% of 20.0)")
        self.truncated(folder / "mlperf_log_accuracy.json")
        if detail is not None:
            where = str(folder.relative_to(self.root))
            for violation in run_rule_violations(detail, self.rnd, "", accuracy=True, where=where):
                self.add(violation)
        return detail

    def truncated(self, path: Path) -> None:
        if path.is_file() and path.stat().st_size > MAX_ACCURACY_LOG_BYTES:
            size = path.stat().st_size
            self.bad("truncation", path, f"{size} bytes: not truncated (at most {MAX_ACCURACY_LOG_BYTES})")

    def closed_model(self, folder: Path, impl: dict, acc: DetailLog | None) -> None:
        """The closed division's model and data: ssd1200_r34 on all 5,000 COCO val 2017 images."""
        model = impl.get("ssdbench_model")
        if model != CLOSED_MODEL:
            why = f"the closed division needs {CLOSED_MODEL} (SSD-ResNet34 1200x1200); this is {model}"
            self.bad("closed-model", folder, why)
        count = acc.get("qsl_reported_total_count") if acc is not None else None
        if count != COCO_VAL_IMAGES:
            self.bad("closed-model", folder, f"the closed division needs the {COCO_VAL_IMAGES} COCO val 2017 images; "
                                             f"the accuracy run had {count}")  # fmt: skip

    def compliance(self, folder: Path, scenario: str) -> None:
        for test in COMPLIANCE_TESTS:
            test_dir = folder / test
            if not test_dir.is_dir():
                self.bad("compliance", test_dir, "missing")
                continue
            if test != "TEST04-B":
                self.passed(test_dir / "verify_performance.txt")
            perf = test_dir / "performance" / "run_1"
            if self.need(perf, PERF_FILES):
                self.audited(perf / "mlperf_log_detail.txt", test, scenario)
        if (folder / "TEST01").is_dir():
            self.test01_accuracy(folder / "TEST01")

    def passed(self, path: Path) -> bool:
        if not path.is_file():
            self.bad("compliance", path, "missing")
            return False
        if "TEST PASS" not in path.read_text(errors="replace"):
            self.bad("compliance", path, "no TEST PASS")
            return False
        return True

    def audited(self, path: Path, test: str, scenario: str) -> None:
        """The compliance run read its audit.config and shows its values."""
        detail = self.detail(path, test04=test.startswith("TEST04"))
        if detail is None:
            return
        if not detail.found_audit_config:
            self.bad("compliance", path, "LoadGen did not report reading an audit.config")
        audit = self.rnd.audit(test, scenario)
        seeds = {k: int(audit[k]) for k in self.rnd.seeds if k in audit} or None
        where = str(path.relative_to(self.root))
        for violation in run_rule_violations(detail, self.rnd, scenario, accuracy=True, seeds=seeds, where=where):
            self.add(violation)
        for key in ("accuracy_log_sampling_target", "accuracy_log_rng_seed", "performance_issue_unique",
                    "performance_issue_same", "performance_issue_same_index"):  # fmt: skip
            if key in audit:
                flag = key in ("performance_issue_unique", "performance_issue_same")
                want, got = (bool if flag else int)(audit[key]), detail.get(f"effective_{key}")
                if got != want:
                    self.bad("compliance", path, f"effective_{key} is {got}, {test} sets {want}")

    def test01_accuracy(self, folder: Path) -> None:
        """TEST01: responses equal, or the baseline comparison within the allowed delta; the log truncated."""
        acc = folder / "accuracy"
        if not self.need(acc, ("mlperf_log_accuracy.json", "accuracy.txt")):
            return
        self.truncated(acc / "mlperf_log_accuracy.json")
        if accuracy_lines(acc / "accuracy.txt")[1] is None:
            self.bad("compliance", acc / "accuracy.txt", "no hash= line (the hash of the full TEST01 accuracy log)")
        text_path = folder / "verify_accuracy.txt"
        if not text_path.is_file():
            self.bad("compliance", text_path, "missing")
            return
        if "TEST PASS" in text_path.read_text(errors="replace"):
            return
        if not self.need(acc, ("baseline_accuracy.txt", "compliance_accuracy.txt")):
            return
        base = accuracy_lines(acc / "baseline_accuracy.txt")[0]
        comp = accuracy_lines(acc / "compliance_accuracy.txt")[0]
        if base is None or comp is None or not compare_accuracy(base, comp, self.rnd).passed:
            why = f"responses differ and the mAPs differ too much: baseline {base}, compliance {comp}"
            self.bad("compliance", acc, why)
