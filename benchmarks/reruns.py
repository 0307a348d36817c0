"""Interactive reruns: two new photos in one class, rerun from the CLI and from the UI, against a
full run, all with the classifier.

    .venv/bin/python benchmarks/reruns.py --reps 3 --cold-ui
    .venv/bin/python benchmarks/reruns.py --reps 3 --against ../old/.venv/bin/fruits

Per repetition, on a copy of the Fruits-360 Test split (2,115 images, 141 classes) with the
shared weights: a full `fruits run` into a fresh output root; then two photos of one class are
added and that class is rerun with `fruits run --classes` (CLI); then two more are added and the
class is rerun from the Dagster UI's server: `fruits ui` is started on the same instance and, once
it is ready for a user (page served, its Spark JVM warmed up: its start-up is not counted), a
backfill of that one partition and everything downstream is launched through its GraphQL API,
exactly as the launch dialog's "Launch backfill" does, timed from the launch to the end of the
backfill's last run; then twice two more photos, and the class rerun as one run tagged with its
partition, as the launch dialog starts a single partition ("Launch 1 run"): the first and the
next single run of that UI session. `--cold-ui` adds one such run from a UI started with
`FRUITS_UI_WARM_SPARK=false` (every run starts its own JVM, as before the UI kept one).
`--against` adds another `fruits` (e.g. an earlier checkout's): its full run and CLI rerun, in
the same repetitions, on their own copy of the images. The CLI rerun's seconds are split into
start-up, each asset's step and the end, from its Dagster events.

`--cli-against OTHER --reruns N` compares CLI reruns alone: after one full run, N rounds of a
rerun of the class by OTHER and by this `fruits` (`fruits run --classes`, two new photos before
each, the order alternating by round), on the same copy of the images and output (each with
its own Dagster home, new at its first rerun).

`--ui-against OTHER --sessions N` compares the UI alone: after one full run, N UI sessions of
OTHER and N of this `fruits`, alternated, on the same copy of the images and output (each state
with its own Dagster home), each with `--ui-runs` single-partition runs; the runs after each
session's first are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import step_budget  # noqa: E402
from machine import describe  # noqa: E402

SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", HERE.parent.parent / "shared"))
DATA = SHARED / "data" / "fruits360"
WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))
CLASS = "Kiwi 1"
ALL_ASSETS = ["raw_images", "labeled_images", "mobilenet_features", "pca_model",
              "pca_features_parquet", "features_csv", "fruit_classifier"]  # fmt: skip
PER_CLASS = ALL_ASSETS[:3]

LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
# What the launch dialog does for one partition: one run of the selected assets, tagged with it.
LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
REPOSITORY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }
"""
RUN_STATUS = """
query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }
"""
STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}
"""


def run(*args: str, env: dict, fruits: str = FRUITS) -> float:
    started = time.perf_counter()
    done = subprocess.run([fruits, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fruits {args[0]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


def graphql(url: str, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


def _launch_one_run(url: str) -> float:
    """One run of every asset for the class, as the launch dialog starts it for one partition."""
    repository = graphql(url, REPOSITORY, {})["repositoriesOrError"]["nodes"][0]
    params = {
        "selector": {
            "repositoryLocationName": repository["location"]["name"],
            "repositoryName": repository["name"],
            "jobName": "all_fruits_assets",
            "assetSelection": [{"path": [name]} for name in ALL_ASSETS],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": CLASS}]},
    }
    started = time.perf_counter()
    launched = graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"run not launched: {launched}")
    status = wait_until_ended(
        lambda: graphql(url, RUN_STATUS, {"id": launched["run"]["runId"]})["runOrError"]["status"],
        ended=("SUCCESS", "FAILURE", "CANCELED"),
    )
    return timed_outcome(started, status, "SUCCESS", "run")


def _launch_backfill(url: str) -> float:
    """A backfill of the one partition and everything downstream, as "Launch backfill" does."""
    params = {
        "partitionsByAssets": [
            {"assetKey": {"path": [name]},
             "partitions": {"range": {"start": CLASS, "end": CLASS}} if name in PER_CLASS
             else None}
            for name in ALL_ASSETS
        ],
        "fromFailure": False,
    }  # fmt: skip
    started = time.perf_counter()
    launched = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {launched}")
    status = wait_until_ended(
        lambda: graphql(url, STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"][
            "status"
        ],
        running=("REQUESTED",),
    )
    return timed_outcome(started, status, "COMPLETED_SUCCESS", "backfill")


def wait_until_ended(status_now, ended: tuple[str, ...] = (), running: tuple[str, ...] = ()) -> str:
    """Poll a status every second until it is one of `ended` (or no longer one of `running`)."""
    while True:
        status = status_now()
        if (ended and status in ended) or (running and status not in running):
            return status
        time.sleep(1)


def timed_outcome(started: float, status: str, success: str, what: str) -> float:
    seconds = time.perf_counter() - started
    if status != success:
        raise RuntimeError(f"the UI's {what} ended {status}")
    return seconds


def ui_session(
    env: dict, images: Path, backfill: bool, runs: int, warm: bool = True, fruits: str = FRUITS
) -> tuple[float | None, list[float], list[dict[str, float]]]:
    """Start `fruits ui` on the instance, wait until it is ready for a user (its page served and,
    unless `warm` is False, its Spark warmed up), then rerun the class: a backfill if asked, then
    `runs` single runs, two new photos before each. (backfill s, run s, run budgets)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = images.parent / "out"
    if not warm:
        env = {**env, "FRUITS_UI_WARM_SPARK": "false"}
    ui = subprocess.Popen(
        [fruits, "ui", "--images", str(images), "--output", str(output), "--weights",
         str(WEIGHTS), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        if warm:
            while not (line := ui.stdout.readline()).startswith("Spark: "):
                if not line and ui.poll() is not None:
                    raise RuntimeError("fruits ui ended before its Spark was warm")
            if not line.startswith("Spark: warm"):
                raise RuntimeError(f"fruits ui: {line.strip()}")
        deadline = time.monotonic() + 300
        while True:
            try:
                graphql(url, "{ assetNodes { id } }", {})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        backfill_s = None
        if backfill:
            add_photos(images, 2)
            backfill_s = _launch_backfill(url)
        times, budgets = [], []
        for _ in range(runs):
            add_photos(images, 2)
            since = time.time()
            times.append(_launch_one_run(url))
            budgets.append(step_budget(Path(env["DAGSTER_HOME"]), since, times[-1]))
            # Which Spark context the run got: one the UI's JVM prepared, a new one there, its own.
            for line in spark_lines(Path(env["DAGSTER_HOME"]), since):
                budgets[-1][line] = budgets[-1].get(line, 0) + 1
        return backfill_s, times, budgets
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=120)


def spark_lines(home: Path, since: float) -> list[str]:
    """What each run created at or after `since` logged about its Spark ("Spark: ...")."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    return [
        record.user_message
        for run in instance.get_run_records()
        if run.create_timestamp.timestamp() >= since
        for record in instance.all_logs(run.dagster_run.run_id)
        if record.dagster_event is None and record.user_message.startswith("Spark: ")
    ]


def add_photos(images: Path, count: int) -> None:
    """`count` more Training photos of the class, each time others."""
    skip = len(list((images / CLASS).glob("added_*")))
    extra = sorted((DATA / "Training" / CLASS).glob("*.jpg"))[skip : skip + count]
    for photo in extra:
        shutil.copy(photo, images / CLASS / f"added_{photo.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--against", help="another `fruits` executable: full run and CLI rerun")
    parser.add_argument("--no-backfill", action="store_true", help="skip the UI's backfill")
    parser.add_argument(
        "--cold-ui", action="store_true", help="also a UI run without the UI's warm Spark JVM"
    )
    parser.add_argument("--cli-against", help="another `fruits`: alternated CLI reruns only")
    parser.add_argument("--reruns", type=int, default=4, help="CLI reruns per `fruits`")
    parser.add_argument("--ui-against", help="another `fruits`: alternated UI sessions only")
    parser.add_argument("--sessions", type=int, default=2, help="UI sessions per state")
    parser.add_argument("--ui-runs", type=int, default=4, help="runs per UI session")
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))
    if args.cli_against:
        compare_cli(args.cli_against, args.reruns)
        return
    if args.ui_against:
        compare_ui(args.ui_against, args.sessions, args.ui_runs)
        return
    full, cli, ui, ui_first, ui_run, cold_ui, other_full, other_cli = ([] for _ in range(8))
    budgets: list[dict[str, float]] = []
    budgets_ui: list[dict[str, float]] = []
    other_budgets: list[dict[str, float]] = []
    for rep in range(args.reps):
        if args.against:
            with tempfile.TemporaryDirectory(prefix="reruns_other_") as tmp:
                images, output = Path(tmp) / "images", Path(tmp) / "out"
                shutil.copytree(DATA / "Test", images)
                env = {**os.environ, "DAGSTER_HOME": str(Path(tmp) / "home")}
                common = ["--images", str(images), "--output", str(output),
                          "--weights", str(WEIGHTS)]  # fmt: skip
                other_full.append(run("run", *common, env=env, fruits=args.against))
                add_photos(images, 2)
                since = time.time()
                other_cli.append(run("run", *common, "--classes", CLASS, env=env,
                                     fruits=args.against))  # fmt: skip
                other_budgets.append(step_budget(Path(tmp) / "home", since, other_cli[-1]))
            print(f"rep {rep + 1}: --against full {other_full[-1]:.1f} s, CLI rerun "
                  f"{other_cli[-1]:.1f} s", flush=True)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="reruns_") as tmp:
            images, output, home = Path(tmp) / "images", Path(tmp) / "out", Path(tmp) / "home"
            shutil.copytree(DATA / "Test", images)
            env = {**os.environ, "DAGSTER_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
            common = ["--images", str(images), "--output", str(output), "--weights", str(WEIGHTS)]
            full.append(run("run", *common, env=env))
            add_photos(images, 2)
            since = time.time()
            cli.append(run("run", *common, "--classes", CLASS, env=env))
            budgets.append(step_budget(home, since, cli[-1]))
            backfill_s, times, ui_budgets = ui_session(env, images, not args.no_backfill, 2)
            if backfill_s is not None:
                ui.append(backfill_s)
            ui_first.append(times[0])
            ui_run.append(times[1])
            budgets_ui.append(ui_budgets[1])
            if args.cold_ui:
                cold_ui.append(ui_session(env, images, False, 1, warm=False)[1][0])
        cold = f", UI run without the warm JVM {cold_ui[-1]:.1f} s" if cold_ui else ""
        backfill = f"UI backfill {ui[-1]:.1f} s, " if ui else ""
        print(f"rep {rep + 1}: full {full[-1]:.1f} s, CLI rerun {cli[-1]:.1f} s, {backfill}"
              f"UI runs {ui_first[-1]:.1f} s (first), {ui_run[-1]:.1f} s (next){cold}",
              flush=True)  # fmt: skip
    f, c, r1, r = (statistics.median(x) for x in (full, cli, ui_first, ui_run))
    u = statistics.median(ui) if ui else None  # None: --no-backfill
    print("\n| run (with the classifier) | median s | / full run |")
    print("| --- | ---: | ---: |")
    rows = [
        ("full run, 2,115 images, `fruits run`", f),
        ("one class rerun after 2 new photos, `fruits run --classes`", c),
        ("the same from the UI: a backfill of one partition + downstream", u),
        ("the same from the UI: one run (launch dialog, one partition), first after start", r1),
        ("the same from the UI: one run, the next one", r),
    ]
    rows = [(label, seconds) for label, seconds in rows if seconds is not None]
    if cold_ui:
        rows.append(("the same from the UI without its warm JVM (`FRUITS_UI_WARM_SPARK=false`)",
                     statistics.median(cold_ui)))  # fmt: skip
    if other_full:
        rows.append(("--against: full run", statistics.median(other_full)))
        rows.append(("--against: one class rerun, CLI", statistics.median(other_cli)))
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {seconds / f:.0%} |")
    backfill = f"; UI backfill / CLI rerun: {u / c:.2f}" if u is not None else ""
    print(f"\nUI run (next) / CLI rerun: {r / c:.2f}{backfill}")
    print("\nWhere a rerun's seconds go (medians):\n")
    groups = {"CLI rerun": budgets, "UI run (next)": budgets_ui, "--against CLI": other_budgets}
    groups = {name: group for name, group in groups.items() if group}
    print("| part | " + " | ".join(f"{name} s" for name in groups) + " |")
    print("| --- |" + " ---: |" * len(groups))
    for part in ["start-up", "queued", *ALL_ASSETS, "end"]:
        cells = [
            f"{statistics.median(x):.1f}" if x else "—"
            for x in ([b[part] for b in group if part in b] for group in groups.values())
        ]
        print(f"| {part} | " + " | ".join(cells) + " |")
    for line in sorted({part for b in budgets_ui for part in b if "Spark: " in part}):
        print(f"\nUI runs (next) that logged {line!r}: {sum(line in b for b in budgets_ui)}")


@contextmanager
def _after_full_run(prefix: str) -> Iterator[tuple[str, Path, list[str], dict[str, str]]]:
    """A copy of the Test split in a new folder, after one full run of this `fruits` into its
    output: (the folder, the images, the run's common arguments, the environment)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        images = Path(tmp) / "images"
        shutil.copytree(DATA / "Test", images)
        common = ["--images", str(images), "--output", str(Path(tmp) / "out"), "--weights",
                  str(WEIGHTS)]  # fmt: skip
        base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        print(f"full run: {run('run', *common, env={**base, 'DAGSTER_HOME': f'{tmp}/home'}):.1f} s")
        yield tmp, images, common, base


def _print_medians(
    title: str,
    states: list[str],
    seconds: dict[str, list[float]],
    budgets: dict[str, list[dict[str, float]]],
    parts: list[str],
) -> None:
    """Each state's median run and, per part, the median of the runs that have it."""
    print(f"\n| {title} | " + " | ".join(states) + " |")
    print("| --- |" + " ---: |" * len(states))
    print("| run | " + " | ".join(f"{statistics.median(seconds[n]):.1f}" for n in states) + " |")
    for part in parts:
        found = [[b[part] for b in budgets[n] if part in b] for n in states]
        cells = [f"{statistics.median(f):.1f}" if f else "—" for f in found]
        print(f"| {part} | " + " | ".join(cells) + " |")


def compare_cli(other: str, reruns: int) -> None:
    """Alternated CLI reruns of the class by `other` and this `fruits` after one full run (see
    the module's docstring): each rerun's seconds, then medians and where they went."""
    states = {"--cli-against": other, "this": FRUITS}
    seconds: dict[str, list[float]] = {name: [] for name in states}
    budgets: dict[str, list[dict[str, float]]] = {name: [] for name in states}
    with _after_full_run("reruns_cli_") as (tmp, images, common, base):
        for round_ in range(reruns):
            order = list(enumerate(states.items()))
            for index, (name, fruits) in order if round_ % 2 == 0 else order[::-1]:
                home = Path(tmp) / f"home_{index}"
                add_photos(images, 2)
                since = time.time()
                env = {**base, "DAGSTER_HOME": str(home)}
                seconds[name].append(
                    run("run", *common, "--classes", CLASS, env=env, fruits=fruits)
                )
                budgets[name].append(step_budget(home, since, seconds[name][-1]))
                print(f"round {round_ + 1}, {name}: {seconds[name][-1]:.1f} s", flush=True)
    _print_medians(
        "part (medians)", list(states), seconds, budgets, ["start-up", *ALL_ASSETS, "end"]
    )


def compare_ui(other: str, sessions: int, runs: int) -> None:
    """Alternated UI sessions of `other` and this `fruits` after one full run (see the module's
    docstring): each run's seconds and where they went, then medians of the runs after the
    first of each session."""
    states = {"--ui-against": other, "this": FRUITS}
    seconds: dict[str, list[float]] = {name: [] for name in states}
    budgets: dict[str, list[dict[str, float]]] = {name: [] for name in states}
    with _after_full_run("reruns_ui_") as (tmp, images, common, base):
        for session in range(sessions):
            for index, (name, fruits) in enumerate(states.items()):
                env = {**base, "DAGSTER_HOME": f"{tmp}/home_{index}"}
                _, times, spent = ui_session(env, images, False, runs, fruits=fruits)
                print(f"session {session + 1}, {name}: " + ", ".join(f"{t:.1f}" for t in times)
                      + " s", flush=True)  # fmt: skip
                seconds[name] += times[1:]
                budgets[name] += spent[1:]
    parts = ["start-up", "queued", *ALL_ASSETS, "end"]
    title = "part (runs after a session's first, medians)"
    _print_medians(title, list(states), seconds, budgets, parts)
    lines = sorted({part for n in states for b in budgets[n] for part in b if "Spark: " in part})
    for line in lines:  # how many of the compared runs logged it
        cells = [str(sum(int(b.get(line, 0)) for b in budgets[n])) for n in states]
        print(f"| runs: {line} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
