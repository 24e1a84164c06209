#!/usr/bin/env python3
"""Checks a SyTest run against Hearth's pass list.

  results.py OUT_DIR [OUT_DIR ...]      outcome of runs (later runs are retries)
  results.py --write OUT_DIR            rewrite passing.txt from a run

A test passes if it passed in any of the runs given (the first is the whole
suite; later ones re-run the files of listed tests that failed, so a flaky
test is retried once). Prints `N passed, M failed`, the listed tests that did
not pass (which fail the check), the tests that pass but are not listed (to add), and
the failures neither listed as passing nor in excluded.txt.
"""
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A run with another default room version keeps its own pass list
# (run.sh: SYTEST_PASS_LIST=passing-v10.txt with HEARTH_ROOM_VERSION=10).
PASSING = HERE / os.environ.get("SYTEST_PASS_LIST", "passing.txt")
EXCLUDED = HERE / os.environ.get("SYTEST_EXCLUDED", "excluded.txt")
VERSION = os.environ.get("HEARTH_ROOM_VERSION") or "12"


def outcomes(out_dir):
    """{test name: 'pass' | 'fail' | 'skip'} and {test name: file} of one run."""
    out_dir = Path(out_dir)
    num_to_file, cur = {}, None
    for line in (out_dir / "progress.log").read_text(errors="replace").splitlines():
        m = re.match(r"^(tests/\S+\.pl):$", line)
        if m:
            cur = m.group(1)
            continue
        m = re.match(r"^\s+Test (\d+) ", line)
        if m and cur:
            num_to_file[int(m.group(1))] = cur
    results, files = {}, {}
    for line in (out_dir / "results.tap").read_text(errors="replace").splitlines():
        m = re.match(r"^(not ok|ok) (\d+) (.*)$", line)
        if not m:
            continue
        status, num, rest = m.groups()
        if status == "ok" and " # skip " in rest:
            name, outcome = rest.split(" # skip ")[0], "skip"
        elif status == "ok":
            name, outcome = re.sub(r" # .*$", "", rest), "pass"
        elif "(expected fail)" in rest:
            name, outcome = rest.replace("(expected fail) ", "").split(" # TODO")[0], "fail"
        else:
            name, outcome = rest, "fail"
        name = name.strip()
        # A name run twice (one test file included by another) passes once
        # it passes anywhere.
        if results.get(name) != "pass":
            results[name] = outcome
        files.setdefault(name, num_to_file.get(int(num), "?"))
    return results, files


def listed(path):
    """Test names in a list file: one per line; in excluded.txt `name<TAB>reason`."""
    if not path.exists():
        return {}
    names = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, reason = line.partition("\t")
        names[name.strip()] = reason.strip()
    return names


def main(argv):
    write = argv[:1] == ["--write"]
    runs = argv[1:] if write else argv
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    results, files = outcomes(runs[0])
    for retry in runs[1:]:
        again, _ = outcomes(retry)
        for name, outcome in again.items():
            if outcome == "pass" and results.get(name) == "fail":
                results[name] = "pass"
                print(f"passed on retry (flaky): {name}")
    passed = sorted(n for n, o in results.items() if o == "pass")
    failed = sorted(n for n, o in results.items() if o == "fail")
    skipped = sum(1 for o in results.values() if o == "skip")
    if write:
        PASSING.write_text(
            f"# SyTest tests Hearth passes on room version {VERSION} (tests/sytest/README.md): CI fails if one of them does not.\n"
            "# Regenerate with tests/sytest/results.py --write OUT_DIR after a full run; leave out tests seen flaky.\n"
            + "".join(f"{n}\n" for n in passed)
        )
        print(f"wrote {len(passed)} tests to {PASSING}")
        return 0
    must_pass, excluded = listed(PASSING), listed(EXCLUDED)
    lost = [n for n in must_pass if results.get(n) != "pass"]
    new = [n for n in passed if n not in must_pass]
    unexplained = [n for n in failed if n not in must_pass and n not in excluded]
    for n in new:
        print(f"newly passing (add to tests/sytest/{PASSING.name}): {n}")
    for n in unexplained:
        print(f"failing, not in {EXCLUDED.name}: {files.get(n, '?')}: {n}")
    for n in lost:
        print(f"REGRESSION (listed as passing): {files.get(n, '?')}: {n} [{results.get(n, 'not run')}]")
    print(f"SyTest (room version {VERSION}): {len(passed)} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
