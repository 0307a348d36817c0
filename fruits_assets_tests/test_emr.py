"""The cloud path for real: `fruits cluster create` and `FRUITS_ENV=emr` runs against moto's S3
and EMR, every asset executed as an EMR step by the emulated cluster (see emr_emulator.py)."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import dagster as dg
import pandas as pd
import pytest
from deltalake import DeltaTable

from fruits_assets import cli
from fruits_assets.emr import cluster as emr_cluster
from fruits_assets.emr import policies
from fruits_assets.emr.bootstrap import pinned_requirements
from fruits_assets.emr.spec import MANAGED_TAG, ClusterSpec
from fruits_assets.resources.spark import s3a_jars
from fruits_assets.settings import FruitsSettings
from fruits_assets.storage import filesystem, layout
from fruits_assets_tests.emr_emulator import EmulatedEmr, start_moto
from fruits_assets_tests.emr_helpers import allowed, certificates_zip
from fruits_assets_tests.helpers import FRUITS

pytestmark = pytest.mark.slow  # spark-submit steps on the emulated EMR

REGION = "eu-west-3"
DATA_BUCKET, STAGING_BUCKET = "fruits-data", "fruits-staging"
IMAGES = f"s3://{DATA_BUCKET}/Fruits_Cloud"  # the seed's layout: <root>/<class>/<file>.jpg
OUTPUT = f"s3://{DATA_BUCKET}/fruits_output"
WEIGHTS = f"s3://{DATA_BUCKET}/models/mobilenet_v2_1.0_224.h5"
CLASSES = ["Banana 1", "Cherry 1", "Kiwi 1"]
IMAGES_PER_CLASS = 10
ASSETS = [
    layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES, layout.PCA_MODEL,
    layout.PCA_FEATURES_PARQUET, layout.FEATURES_CSV, layout.FRUIT_CLASSIFIER,
]  # fmt: skip


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, fruits360, shared_weights):
    """moto on loopback, the seed's bucket layout, a cluster from the spec, an emulated EMR."""
    try:
        s3a_jars(FruitsSettings.from_env().jars_dir)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: scripts/setup.sh fetches them")
    saved_env = dict(os.environ)
    server, endpoint = start_moto()
    home = tmp_path_factory.mktemp("emr_dagster_home")
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        DAGSTER_HOME=str(home),
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FRUITS_IMAGES", "FRUITS_OUTPUT"):
        os.environ.pop(name, None)
    try:
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(
            Bucket=DATA_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        for label in CLASSES:
            for image in sorted((fruits360 / "Test" / label).iterdir())[:IMAGES_PER_CLASS]:
                s3.upload_file(str(image), DATA_BUCKET, f"Fruits_Cloud/{label}/{image.name}")
        # A truncated JPEG: it must be recorded as rejected, not lost silently.
        s3.put_object(Bucket=DATA_BUCKET, Key="Fruits_Cloud/Kiwi 1/broken.jpg", Body=b"\xff\xd8")
        s3.upload_file(str(shared_weights), DATA_BUCKET, WEIGHTS.split("/", 3)[3])

        sent: dict = {}
        emr_calls: list[str] = []
        session = boto3._get_default_session()
        session.events.register(
            "provide-client-params.emr.RunJobFlow", lambda params, **_: sent.update(params)
        )
        session.events.register("before-call.emr", lambda model, **_: emr_calls.append(model.name))
        said: list[str] = []
        certificates = certificates_zip(tmp_path_factory.mktemp("tls") / "fruits-tls.zip")
        spec = ClusterSpec.load(staging_bucket=STAGING_BUCKET, tls_certificates=str(certificates))
        cluster_id = emr_cluster.create(spec, say=said.append)
        create_calls = list(emr_calls)
        os.environ.update(
            FRUITS_ENV="emr",
            FRUITS_EMR_CLUSTER_ID=cluster_id,
            FRUITS_EMR_STAGING_BUCKET=STAGING_BUCKET,
            FRUITS_EMR_POLL_SECONDS="1",
            FRUITS_EMR_LOG_WAIT_SECONDS="10",
            # 24 training images: L-BFGS would run all 200 iterations, one Spark job each.
            FRUITS_CLASSIFIER_MAX_ITER="30",
        )
        with EmulatedEmr(REGION) as emr:
            yield {
                "spec": spec,
                "cluster_id": cluster_id,
                "sent": sent,
                "said": said,
                "emr": emr,
                "create_calls": create_calls,
                "certificates": certificates,
            }
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved_env)


def run_fruits(*args: str) -> tuple[int, str]:
    """`fruits run` as a user runs it: its own process, talking to moto over HTTP."""
    command = [FRUITS, "run", "--images", IMAGES, "--output", OUTPUT, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    return done.returncode, done.stdout + done.stderr[-5000:]


def run_with_step_main(main_file: Path) -> subprocess.CompletedProcess:
    """`fruits run` of one class in its own process, its launcher shipping `main_file` as the
    program every EMR step runs."""
    program = (
        "import sys\n"
        "from fruits_assets.emr.launcher import FruitsEmrStepLauncher\n"
        f"FruitsEmrStepLauncher._main_file_local_path = lambda self: {str(main_file)!r}\n"
        "from fruits_assets.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["run", "--images", IMAGES, "--output", OUTPUT, "--weights", WEIGHTS,
            "--classes", "Banana 1"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=900
    )


def s3_options() -> dict[str, str]:
    """What the `deltalake` package needs to read moto's S3 (the endpoint is in the environment)."""
    return {"AWS_ALLOW_HTTP": "true", "AWS_REGION": os.environ.get("AWS_REGION", REGION)}


def read_parquet(uri: str) -> pd.DataFrame:
    """A published Delta table in moto's S3, read as users read it (the `deltalake` package)."""
    table = DeltaTable(uri, storage_options=s3_options()).to_pandas()
    return table.assign(label=table.label.astype(str)) if "label" in table else table


def test_cluster_create_sends_a_private_self_terminating_cluster(cloud):
    spec, sent = cloud["spec"], cloud["sent"]
    assert sent["ReleaseLabel"].startswith("emr-7.")
    assert sent["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert sent["LogUri"] == f"s3://{STAGING_BUCKET}/emr-logs/"
    groups = {g["InstanceRole"]: g for g in sent["Instances"]["InstanceGroups"]}
    assert groups["MASTER"]["InstanceCount"] == 1 and groups["CORE"]["InstanceCount"] == 2
    assert {g["InstanceType"] for g in groups.values()} == {"m5.xlarge"}
    # No security group of ours, hence no port 22 rule; no account-wide setting touched.
    assert not any("SecurityGroup" in key for key in sent["Instances"])
    assert not [c for c in cloud["create_calls"] if "BlockPublicAccess" in c], cloud["create_calls"]
    assert {"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]} in sent["Tags"]
    emr = boto3.client("emr", region_name=REGION)
    tags = emr.describe_cluster(ClusterId=cloud["cluster_id"])["Cluster"]["Tags"]
    assert {"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]} in tags
    name = sent["SecurityConfiguration"]
    security = json.loads(emr.describe_security_configuration(Name=name)["SecurityConfiguration"])[
        "EncryptionConfiguration"
    ]
    assert security["EnableAtRestEncryption"] is True
    assert security["AtRestEncryptionConfiguration"]["S3EncryptionConfiguration"] == {
        "EncryptionMode": "SSE-S3"
    }
    # TLS between nodes, with the certificates zip staged where only the operator writes.
    assert security["EnableInTransitEncryption"] is True
    tls = security["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"]
    assert tls["CertificateProviderType"] == "PEM"
    bucket, key = tls["S3Object"][len("s3://") :].split("/", 1)
    assert bucket == STAGING_BUCKET and key.startswith(spec.layout.tls + "/")
    s3 = boto3.client("s3", region_name=REGION)
    staged = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert staged == cloud["certificates"].read_bytes()
    assert any("TLS in transit" in line for line in cloud["said"])
    # The staging bucket carries pickles: private and encrypted.
    block = s3.get_public_access_block(Bucket=STAGING_BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rules = s3.get_bucket_encryption(Bucket=STAGING_BUCKET)["ServerSideEncryptionConfiguration"]
    assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # The bootstrap script installs exactly the versions installed here.
    action = sent["BootstrapActions"][0]["ScriptBootstrapAction"]["Path"]
    bucket, key = action[len("s3://") :].split("/", 1)
    script = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    for pin in pinned_requirements():
        assert f"'{pin}'" in script
    assert "'dagster==1.13.27'" in script and "'tensorflow==2.21.0'" in script
    assert f"{spec.python_interpreter} -m venv {spec.venv}" in script
    exports = sent["Configurations"][0]["Configurations"][0]["Properties"]
    assert exports["PYSPARK_PYTHON"] == f"{spec.venv}/bin/python"
    listed = emr.list_bootstrap_actions(ClusterId=cloud["cluster_id"])["BootstrapActions"]
    assert listed[0]["ScriptPath"] == action


def test_secure_account_alone_sets_block_public_access_and_says_what_changed(cloud, capsys):
    emr = boto3.client("emr", region_name=REGION)
    # A new account's default: public rules blocked, except port 22.
    emr.put_block_public_access_configuration(
        BlockPublicAccessConfiguration={
            "BlockPublicSecurityGroupRules": True,
            "PermittedPublicSecurityGroupRuleRanges": [{"MinRange": 22, "MaxRange": 22}],
        }
    )
    assert cli.main(["cluster", "secure-account", "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert "permitted public rules on ports 22" in out and "now blocks every public port" in out
    blocked = emr.get_block_public_access_configuration()["BlockPublicAccessConfiguration"]
    assert blocked["BlockPublicSecurityGroupRules"] is True
    assert not blocked.get("PermittedPublicSecurityGroupRuleRanges")
    assert cli.main(["cluster", "secure-account", "--region", REGION]) == 0
    assert "already blocks every public port: no change" in capsys.readouterr().out


def test_whole_graph_materializes_through_emr_steps(cloud):
    code, out = run_fruits("--weights", WEIGHTS)
    emr: EmulatedEmr = cloud["emr"]
    assert code == 0, out + "\n".join(r.stderr[-3000:] for r in emr.runs if r.returncode)
    # Every asset was one EMR step, run by spark-submit against the emulated cluster.
    assert len(emr.runs) == len(ASSETS)
    assert all(r.returncode == 0 for r in emr.runs)
    assert all(r.command[r.command.index("--master") + 1] == "local[2]" for r in emr.runs)

    instance = dg.DagsterInstance.get()
    for asset in ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, asset
        metadata = event.asset_materialization.metadata
        assert metadata["emr_cost_estimate_usd"].value > 0, asset
        assert "m5.xlarge in eu-west-3" in metadata["emr_price_basis"].value
    (run,) = instance.get_runs()
    checks = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = {
        (e.dagster_event.event_specific_data.asset_key.to_user_string(),
         e.dagster_event.event_specific_data.check_name):
        e.dagster_event.event_specific_data.passed
        for e in checks
    }  # fmt: skip
    assert len(evaluations) == 13 and all(evaluations.values()), evaluations
    # The PCA's step read the feature table's files from S3 in its Python workers (pyarrow).
    (moments,) = [
        e.user_message for e in instance.all_logs(run.run_id) if "training moments" in e.message
    ]
    features_uri = layout.asset_dir(OUTPUT, layout.MOBILENET_FEATURES)
    live = DeltaTable(features_uri, storage_options=s3_options()).file_uris()
    assert f"the workers read the classes' {len(live)} data files" in moments, moments

    features = read_parquet(features_uri)
    assert len(features) == len(CLASSES) * IMAGES_PER_CLASS
    assert set(features.label) == set(CLASSES)
    pca = read_parquet(layout.asset_dir(OUTPUT, layout.PCA_FEATURES_PARQUET))
    k = instance.get_latest_materialization_event(dg.AssetKey(layout.PCA_MODEL))
    k = k.asset_materialization.metadata["k"].value
    assert len(pca) == len(features) and len(pca.pca_features.iloc[0]) == k
    csv = pd.read_csv(filesystem.Location.of(layout.csv_path(OUTPUT)).fs.open_input_file(
        filesystem.Location.of(layout.csv_path(OUTPUT)).path))  # fmt: skip
    assert len(csv) == len(features) and csv.shape[1] == k + 2  # path, label, pca_feature_1..k
    assert len(read_parquet(layout.asset_dir(OUTPUT, layout.PCA_MODEL))) == 1
    rejected = read_parquet(layout.rejected_images_dir(OUTPUT))
    assert list(rejected.path.str.rsplit("/", n=1).str[-1]) == ["broken.jpg"]


def test_steps_events_and_operator_files_lie_apart_as_the_policies_say(cloud):
    spec: ClusterSpec = cloud["spec"]
    staging = spec.layout
    s3 = boto3.client("s3", region_name=REGION)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=STAGING_BUCKET)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    events = [k for k in keys if k.startswith(staging.events + "/")]
    assert len(events) == len(ASSETS) and all(k.endswith("/events.json") for k in events)
    for key in events:  # Dagster's JSON, written by the step main: no pickle
        body = s3.get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read().decode("utf-8")
        assert json.loads(body)[0]["__class__"] == "EventLogEntry"
    assert not [k for k in keys if k.endswith(".pkl") and not k.startswith(staging.steps + "/")]
    nodes = policies.render(
        "nodes", policies.placeholders(spec, "123456789012", DATA_BUCKET, "fruits_output")
    )
    for key in keys:
        arn = f"arn:aws:s3:::{STAGING_BUCKET}/{key}"
        node_written = key.startswith((staging.events + "/", spec.log_prefix + "/"))
        assert allowed(nodes, "s3:PutObject", arn) is node_written, key
        if not node_written:  # steps/, bootstrap/, tls/: the operator's, read by the nodes
            assert key.startswith((staging.steps, staging.bootstrap, staging.tls)), key
            assert allowed(nodes, "s3:GetObject", arn), key


def test_one_class_reruns_through_the_step_launcher(cloud):
    before = read_parquet(layout.asset_dir(OUTPUT, layout.MOBILENET_FEATURES))
    steps_before = len(cloud["emr"].runs)
    code, out = run_fruits("--weights", WEIGHTS, "--classes", "Kiwi 1")
    assert code == 0, out
    assert len(cloud["emr"].runs) == steps_before + len(ASSETS)
    after = read_parquet(layout.asset_dir(OUTPUT, layout.MOBILENET_FEATURES))
    assert len(after) == len(before) and set(after.label) == set(CLASSES)
    run = dg.DagsterInstance.get().get_runs(limit=1)[0]
    assert run.tags["dagster/asset_partition_range_start"] == "Kiwi 1"
    assert run.status == dg.DagsterRunStatus.SUCCESS


def test_a_step_that_dies_mid_write_leaves_the_published_outputs(cloud, monkeypatch):
    """A step killed on its node while its audited data is about to be published: every
    published S3 output is exactly what it was."""
    tables = [layout.MOBILENET_FEATURES, layout.PCA_FEATURES_PARQUET, layout.PCA_MODEL]
    before = {t: read_parquet(layout.asset_dir(OUTPUT, t)) for t in tables}
    csv_before = filesystem.read_bytes(layout.csv_path(OUTPUT))
    monkeypatch.setenv("FRUITS_FAILPOINT", f"{layout.MOBILENET_FEATURES}:exit")
    code, out = run_fruits("--weights", WEIGHTS, "--classes", "Kiwi 1")
    assert code == 1 and "step mobilenet_features failed" in out, out
    for table in tables:
        after = read_parquet(layout.asset_dir(OUTPUT, table))
        key = ["path"] if "path" in after else ["k"]
        pd.testing.assert_frame_equal(
            after.sort_values(key).reset_index(drop=True),
            before[table].sort_values(key).reset_index(drop=True),
        )
    assert filesystem.read_bytes(layout.csv_path(OUTPUT)) == csv_before


def test_a_failing_step_fails_the_run_with_the_driver_error(cloud):
    missing = f"s3://{DATA_BUCKET}/models/missing.h5"
    code, out = run_fruits("--weights", missing, "--classes", "Banana 1")
    assert code == 1
    assert "step mobilenet_features failed" in out and "missing.h5" in out
    assert "status:             FAILED" in out


def test_a_crashing_driver_fails_the_step_with_its_stderr(cloud, tmp_path):
    crash = tmp_path / "crash_main.py"
    crash.write_text("import sys\nsys.exit('boom: the driver died before Dagster started')\n")
    # `fruits run` in its own process, with a launcher whose step main dies at once.
    done = run_with_step_main(crash)
    out = done.stdout
    assert done.returncode == 1
    driver = cloud["emr"].runs[-1].stdout
    assert "step raw_images failed" in out and "boom: the driver died" in out, out + driver
    run = dg.DagsterInstance.get().get_runs(limit=1)[0]
    logs = [e.user_message for e in dg.DagsterInstance.get().all_logs(run.run_id)]
    assert any("Spark driver output (tail)" in m and "boom" in m for m in logs)


def test_a_step_leaving_a_pickle_as_its_events_fails_and_runs_nothing_here(cloud, tmp_path):
    marker = tmp_path / "code-ran-on-the-operator"
    evil = tmp_path / "evil_main.py"
    # What a compromised dependency on a node could do: a pickle where the launcher reads.
    evil.write_text(
        "import os, pickle, posixpath, sys\n"
        "import boto3\n"
        "class Exploit:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ({f'touch {shlex.quote(str(marker))}'!r},))\n"
        "bucket, ref_key, events_key = sys.argv[1:4]\n"
        "ref_dir = posixpath.dirname(ref_key)\n"
        "for key in (events_key, ref_dir + '/events.pkl'):\n"
        "    boto3.client('s3').put_object(Bucket=bucket, Key=key, Body=pickle.dumps(Exploit()))\n"
    )
    done = run_with_step_main(evil)
    out = done.stdout + done.stderr[-5000:]
    assert cloud["emr"].runs[-1].returncode == 0, cloud["emr"].runs[-1].stderr[-3000:]
    assert done.returncode == 1, out
    assert "step raw_images: rejected the events object" in out, out
    assert "not Dagster events JSON" in out
    assert not marker.exists()


def test_step_logs_land_where_emr_puts_them(cloud):
    run = cloud["emr"].runs[0]
    s3 = boto3.client("s3", region_name=REGION)
    key = f"emr-logs/{cloud['cluster_id']}/steps/{run.step_id}/stdout.gz"
    stdout = gzip.decompress(s3.get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read())
    assert b"fruits_assets: running step raw_images" in stdout
    assert any(Path(part).name == "step_main.py" for part in run.command)


def test_cluster_terminate_from_the_cli(cloud, capsys):  # last: the cluster is gone after it
    assert cli.main(["cluster", "terminate", cloud["cluster_id"], "--region", REGION]) == 0
    assert "termination requested" in capsys.readouterr().out
    emr = boto3.client("emr", region_name=REGION)
    state = emr.describe_cluster(ClusterId=cloud["cluster_id"])["Cluster"]["Status"]["State"]
    assert state in ("TERMINATING", "TERMINATED")


def test_cluster_bootstrap_prints_the_generated_script(capsys):
    assert cli.main(["cluster", "bootstrap", "--staging-bucket", "any"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/bin/bash") and "'dagster==1.13.27'" in script
    assert cli.main(["cluster", "create"]) == 2  # no staging bucket: a usage error, no AWS call
    assert "staging_bucket" in capsys.readouterr().err
